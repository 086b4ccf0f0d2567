"""The FID Inception-v3 in Flax: 2048-d pool3 features, as pytorch-fid and the original TTUR code compute them.

FID is the Fréchet distance between the Gaussians fitted to these features of two image sets (docs/design.md §6);
the network, its input convention and its weights are pytorch-fid's, reproduced without torch.

Modules:

- `network`: `FIDInceptionV3` and its blocks (BasicConv2d, FrozenBatchNorm, Inception A-E), torch-exact bilinear
  resize and preprocessing, the constants INPUT_SIZE, FEATURE_DIM, BATCH_NORM_EPS, DEFAULT_PRECISION;
- `torch_file`: `read_torch_file`, a torch-free reader of `torch.save` files (zip and legacy formats);
- `weights`: pytorch-fid state dict → Flax params, the weight file's location ($LEBM_JAX_INCEPTION_WEIGHTS, the
  cache), download and SHA-256 checks, `load_fid_params`;
- `features`: `InceptionFeatures` / `make_feature_fn`, the batched, sharded feature function.

Usage: `inception.make_feature_fn(inception.load_fid_params())(images)` → (N, 2048) float32 numpy.
"""

from lebm_jax.measure.inception.features import InceptionFeatures, make_feature_fn
from lebm_jax.measure.inception.network import (
    BATCH_NORM_EPS,
    DEFAULT_PRECISION,
    FEATURE_DIM,
    INPUT_SIZE,
    BasicConv2d,
    FIDInceptionV3,
    FrozenBatchNorm,
    InceptionA,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE,
    avg_pool_3x3_exclude_pad,
    bilinear_taps,
    max_pool_3x3,
    preprocess,
    resize_bilinear,
)
from lebm_jax.measure.inception.torch_file import read_torch_file
from lebm_jax.measure.inception.weights import (
    FID_WEIGHTS_FILE,
    FID_WEIGHTS_URL,
    WEIGHTS_ENV,
    check_sha256,
    download_fid_weights,
    expected_sha256,
    fid_params_from_state_dict,
    fid_weights_path,
    load_fid_params,
    sha256_of,
)

__all__ = [
    "BATCH_NORM_EPS",
    "DEFAULT_PRECISION",
    "FEATURE_DIM",
    "FID_WEIGHTS_FILE",
    "FID_WEIGHTS_URL",
    "INPUT_SIZE",
    "WEIGHTS_ENV",
    "BasicConv2d",
    "FIDInceptionV3",
    "FrozenBatchNorm",
    "InceptionA",
    "InceptionB",
    "InceptionC",
    "InceptionD",
    "InceptionE",
    "InceptionFeatures",
    "avg_pool_3x3_exclude_pad",
    "bilinear_taps",
    "check_sha256",
    "download_fid_weights",
    "expected_sha256",
    "fid_params_from_state_dict",
    "fid_weights_path",
    "load_fid_params",
    "make_feature_fn",
    "max_pool_3x3",
    "preprocess",
    "read_torch_file",
    "resize_bilinear",
    "sha256_of",
]
