"""lebm_jax: latent-space energy-based prior models (Pang et al. 2020) in JAX.

Modules, one concept each:
  networks         flax modules: MLP tilt f_α, conv generator g_β, quadratic tilt, linear generator
  model            densities of the latent EBM (log π0, log p_α up to Z_α, log p_β(x|z), π_t)
  langevin         ULA / MALA short-run chains as pure functions
  ladder           temperature schedule t_i = (i/(N-1))^p, trapezoid and Friel correction
  objectives       "vanilla" and "ti" losses, and their gradients for one batch
  gradstats        total / MCMC / data variance of the learning gradient
  linear_gaussian  the exactly solvable model and its closed-form answers
"""

from lebm_jax.core import gradstats
from lebm_jax.core import ladder
from lebm_jax.core import langevin
from lebm_jax.core import linear_gaussian
from lebm_jax.core import model
from lebm_jax.core import networks
from lebm_jax.core import objectives
from lebm_jax.core.langevin import ChainResult, langevin_chain, sample_base
from lebm_jax.core.ladder import power_schedule, trapezoid
from lebm_jax.core.model import LatentEBM, image_model
from lebm_jax.core.objectives import ChainSpec, loss_and_grads, make_objective

__all__ = [
    "ChainResult", "ChainSpec", "LatentEBM", "gradstats", "image_model", "ladder", "langevin",
    "langevin_chain", "linear_gaussian", "loss_and_grads", "make_objective", "model", "networks",
    "objectives", "power_schedule", "sample_base", "trapezoid",
]
