"""Load a trained workdir and call its jitted samplers from Python.

    from lebm_jax.api import Trained
    model = Trained.load("runs/digits")              # latest checkpoint (or step=...)
    images = model.generate(jax.random.key(0), 64)   # (64, H, W, C) in [-1, 1]
    z = model.posterior(images, jax.random.key(1))   # z ~ p(z|x), (64, nz); t=0.5 for π_t
    est = model.log_likelihood(images, jax.random.key(2), num_temps=20)  # TI estimate of log p(x)

Every method is jitted once per distinct argument shape; the chain settings are the run's config
(``prior_chain``, ``posterior_chain``, ``ti``) unless overridden.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lebm_jax.core import sampling
from lebm_jax.core.model import LatentEBM
from lebm_jax.data.images import to_float
from lebm_jax.training import build
from lebm_jax.training import config as config_lib
from lebm_jax.training.checkpoint import Checkpointer, abstract_like
from lebm_jax.training.step import create_train_state

Array = jax.Array


def _as_images(x) -> Array:
    """uint8 images in [0, 255] or floats in [-1, 1] -> float32 in [-1, 1]."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return jnp.asarray(to_float(x))
    return jnp.asarray(x, jnp.float32)


@dataclasses.dataclass(eq=False)
class Trained:
    config: ml_collections.ConfigDict
    model: LatentEBM
    params: Any  # {"ebm": ..., "gen": ...}
    step: int
    workdir: str

    @classmethod
    def load(cls, workdir: str, step: int | None = None) -> "Trained":
        """The parameters of ``workdir``'s checkpoint at ``step`` (default: the latest)."""
        if not os.path.isdir(os.path.join(workdir, "checkpoints")):
            raise FileNotFoundError(f"{workdir} has no checkpoints/ directory: is it a training workdir?")
        ckpt = Checkpointer(workdir, max_to_keep=None, read_only=True)
        try:
            steps = ckpt.all_steps()
            if not steps:
                raise FileNotFoundError(f"{ckpt.directory} holds no checkpoint")
            if step is None:
                step = steps[-1]
            elif step not in steps:
                raise ValueError(f"step={step} has no checkpoint in {ckpt.directory}; there are {steps}")
            config = config_lib.from_saved(ckpt.read_config(step))
            model = build.build_model(config)
            template = create_train_state(model, build.make_optimizers(config, 1), jax.random.key(0))
            state = ckpt.restore(step, abstract_like(template), config)
        finally:
            ckpt.close()
        return cls(config, model, jax.device_get(state.params), int(step), os.path.abspath(workdir))

    # --- chains -----------------------------------------------------------------------------------
    @functools.cached_property
    def _prior_chain(self):
        return build.prior_chain(self.config)

    @functools.cached_property
    def _posterior_chain(self):
        return build.posterior_chain(self.config)

    @functools.cached_property
    def _jitted(self) -> dict:
        m = self.model
        return {
            "prior": jax.jit(lambda p, k, n: sampling.prior_latents(m, self._prior_chain, p, k, n).z,
                             static_argnums=2),
            "generate": sampling.jit_generate(m, self._prior_chain),
            "posterior": jax.jit(lambda p, x, k, t: sampling.posterior_latents(m, self._posterior_chain, p, x, k, t).z),
            "decode": jax.jit(lambda p, z: m.generate(p["gen"], z)),
            "ti": jax.jit(
                lambda p, x, k, n, pw, s: sampling.ti_log_likelihood(m, self._posterior_chain, p, x, k, n, pw, s),
                static_argnums=(3, 4, 5),
            ),
        }

    # --- the public calls ---------------------------------------------------------------------------
    def prior_latents(self, key: Array, num: int) -> Array:
        """z ~ p_α by the prior chain: (num, nz)."""
        return self._jitted["prior"](self.params, key, int(num))

    def generate(self, key: Array, num: int) -> Array:
        """Generated images g_β(z), z ~ p_α: (num, H, W, C) in [-1, 1]."""
        return self._jitted["generate"](self.params, key, int(num))

    def decode(self, z: Array) -> Array:
        """g_β(z) for given latents (..., nz)."""
        return self._jitted["decode"](self.params, jnp.asarray(z, jnp.float32))

    def posterior(self, x, key: Array, t: float = 1.0) -> Array:
        """z ~ π_t(z|x) ∝ p_β(x|z)^t p_α(z) for each image (B, H, W, C) (uint8 or [-1, 1]): (B, nz)."""
        return self._jitted["posterior"](self.params, _as_images(x), key, jnp.float32(t))

    def reconstruct(self, x, key: Array) -> Array:
        """g_β(z⁺), z⁺ ~ p(z|x): (B, H, W, C) in [-1, 1]."""
        return self.decode(self.posterior(x, key))

    def log_likelihood(
        self, x, key: Array, num_temps: int | None = None, power: float | None = None, num_chains: int = 1
    ) -> dict:
        """TI estimate of log p(x) per image: {"log_px": (B,), "rung_log_lik": (N, B)[, "log_px_friel"]}.

        Defaults to the run's ladder (config.ti); the posterior chain settings are the run's.
        """
        n = int(num_temps if num_temps is not None else self.config.ti.num_temps)
        pw = float(power if power is not None else self.config.ti.power)
        return self._jitted["ti"](self.params, _as_images(x), key, n, pw, int(num_chains))
