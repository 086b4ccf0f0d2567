"""Layer 1, data in and out: image data sets, the uint8 ↔ [−1, 1] conversion, files written atomically.

    datasets  ImageData; loading digits, tfds sets, .npz files and image folders; the resumable batch order
    images    to_float / to_uint8 (the one conversion), as_model_images (the check at every entry), grids as PNG
    files     write_atomic / write_json / read_json, the cache directory
"""
