r"""scikit-learn's handwritten digits: the embedded default, trains in minutes on a laptop CPU.

    python -m experiments.train --config configs/digits.py --workdir runs/digits
    python -m experiments.train --config configs/digits.py --workdir runs/digits_ti \
        --config.variant=ti --config.ti.power=0.3

The 1,797 8×8 images ship inside scikit-learn, so nothing is downloaded. They are upscaled bilinearly
to 16×16: at 8×8 a stroke is one pixel wide and the generator would be a single transposed
convolution; at 16×16 it has two upsampling layers like the image-scale models and the sample grids
are legible, at a cost that is still small on two CPU cores. The last 297 images are the test split.
"""

from lebm_jax.training.config import base_config


def get_config():
    c = base_config()
    c.data.name = "digits"
    c.data.image_size = 16
    c.data.channels = 1
    c.model.latent_dim = 16
    c.model.ngf = 16
    # 16 → 32 (4×4) → 16 (8×8) → 1 (16×16) channels: samples as good (classifier FD 71 vs 68 after 600
    # steps) as ngf 16's 128/64, at a quarter of the cost, which keeps the 10-rung ti variant in minutes.
    c.model.generator_widths = (32, 16)
    c.model.ebm_hidden = 64
    c.optim.lr_ebm = 1e-4
    c.optim.lr_gen = 1e-3
    c.optim.lr_decay = 0.99
    c.batch_size = 100
    c.num_steps = 600
    c.log_every = 50
    c.checkpoint_every = 250
    c.sample_every = 500
    # Sample quality in the feature space of a classifier trained on the digits' own labels (Inception
    # features of 16×16 grey digits would say little), against all 1,500 training images.
    c.eval.every = 200
    c.eval.num_samples = 1000
    c.eval.feature_space = "classifier"
    c.eval.kid_subsets = 20
    c.eval.kid_subset_size = 500
    c.eval.batch_size = 500
    c.gradstats.every = 200
    c.gradstats.num_draws = 6
    return c
