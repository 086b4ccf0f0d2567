r"""CelebA at 64×64×3: the aligned faces, centre-cropped to 140×140, then resized to 64×64.

    python -m experiments.train --config configs/celeba64.py --workdir runs/celeba64

Data: tensorflow-datasets ``celeb_a`` (its files need a manual download; point
``--config.data.path`` at the tfds data_dir that holds them). Generator 4→8→16→32→64 with widths
ngf·(8, 4, 2, 1) as in Pang et al.'s CelebA network.
"""

from lebm_jax.training.config import base_config


def get_config():
    c = base_config()
    c.data.name = "celeba"
    c.data.image_size = 64
    c.num_steps = 1628 * 30  # 162,770 training images, 30 epochs
    return c
