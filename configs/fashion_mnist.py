r"""Fashion-MNIST (28×28×1), with the MNIST settings: generator 7→14→28.

    python -m experiments.train --config configs/fashion_mnist.py --workdir runs/fashion_mnist

Data: tensorflow-datasets ``fashion_mnist``. 60,000 training images = 600 steps per epoch at batch 100.
"""

from lebm_jax.training.config import base_config


def get_config():
    c = base_config()
    c.data.name = "fashion_mnist"
    c.data.image_size = 28
    c.data.channels = 1
    c.model.latent_dim = 32
    c.model.ngf = 32
    c.num_steps = 600 * 30  # 30 epochs
    return c
