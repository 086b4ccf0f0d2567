"""lebm_jax: latent-space energy-based prior models (Pang et al. 2020) in JAX.

Layers (docs/architecture.md); each imports only from those above it in this list:

  core/      the math: networks, model densities, Langevin chains, TI ladder, objectives, sampling,
             gradient statistics, the exactly solvable linear-Gaussian model, devices, backend choices
  data/      data sets, the uint8 ↔ [−1, 1] conversion and image grids, atomic files and the cache
  measure/   evaluators (held-out, sample quality, gradient statistics) behind one interface and one
             factory; feature spaces, metrics, the classifier, the FID Inception-v3
  training/  config, model/objective building, the data-parallel step, the loop, checkpoints, writers,
             `Trained`, offline evaluation of a checkpoint
  study/     the variance study's grid and runner, and its report (load, stats, figures, table, page)
  bench/     the benchmark: FLOP counting, timing, the benchmarks, formatting

Public import paths: `lebm_jax.api.Trained`, `lebm_jax.config` (what config files import), and the core
names re-exported below. The math is in docs/design.md.
"""

from lebm_jax.core import gradstats, ladder, langevin, linear_gaussian, model, networks, objectives
from lebm_jax.core.ladder import power_schedule, trapezoid
from lebm_jax.core.langevin import ChainResult, ChainSpec, langevin_chain, sample_base
from lebm_jax.core.model import LatentEBM, image_model
from lebm_jax.core.objectives import loss_and_grads, make_objective

__all__ = [
    "ChainResult", "ChainSpec", "LatentEBM", "gradstats", "image_model", "ladder", "langevin",
    "langevin_chain", "linear_gaussian", "loss_and_grads", "make_objective", "model", "networks",
    "objectives", "power_schedule", "sample_base", "trapezoid",
]
