r"""CIFAR-10 (32×32×3) with the SVHN reference settings (Pang et al. report FID 70.15).

    python -m experiments.train --config configs/cifar10.py --workdir runs/cifar10

Data: tensorflow-datasets ``cifar10``. 50,000 training images = 500 steps per epoch at batch 100.
Pang et al.'s CIFAR-10 generator is wider (ngf 128); ``--config.model.ngf=128`` gives it.
"""

from lebm_jax.training.config import base_config


def get_config():
    c = base_config()
    c.data.name = "cifar10"
    c.model.latent_dim = 128
    c.num_steps = 500 * 100  # 100 epochs
    return c
