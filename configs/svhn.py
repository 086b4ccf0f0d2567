r"""SVHN (cropped digits, 32×32×3) with the settings of Pang et al.'s official code (docs/design.md §8).

    python -m experiments.train --config configs/svhn.py --workdir runs/svhn
    python -m experiments.train --config configs/svhn.py --workdir runs/svhn_ti --config.variant=ti

Data: tensorflow-datasets ``svhn_cropped`` (prepared once with ``tfds build svhn_cropped``, or found in
``--config.data.path``, a tfds data_dir). Batch 100, nz 100, ngf 64, EBM 200-200 GELU, σ0 1, σ 0.3,
prior chain 60 × 0.4, posterior chain 20 × 0.1, Adam 2e-5 / 1e-4 with betas (0.5, 0.999), lr × 0.998
per epoch; 73,257 training images = 732 steps per epoch.
"""

from lebm_jax.training.config import base_config


def get_config():
    c = base_config()
    c.data.name = "svhn"
    c.num_steps = 732 * 70  # 70 epochs
    return c
