"""Load a trained workdir and call its jitted samplers from Python.

    from lebm_jax.api import Trained
    model = Trained.load("runs/digits")              # latest checkpoint (or step=...)
    images = model.generate(jax.random.key(0), 64)   # (64, H, W, C) in [-1, 1]
    z = model.posterior(images, jax.random.key(1))   # z ~ p(z|x), (64, nz); t=0.5 for π_t
    est = model.log_likelihood(images)               # log p(x): the held-out protocol's TI and AIS
    est = model.training_log_likelihood(images, jax.random.key(2), num_temps=20)  # a training ladder's TI
    est = model.training_log_likelihood(images, jax.random.key(2), exchange_every=5)  # ... with replica exchange

Every method is jitted once per distinct argument shape; the chain settings are the run's config
(``prior_chain``, ``posterior_chain``, ``ti``, ``loglik``) unless overridden.

Inputs are checked on the host before anything is traced (`lebm_jax.data.images.as_model_images`): images
must be (B, H, W, C) of the model's shape, uint8 in [0, 255] or floats in [-1, 1], finite. Floats with no
negative value (all in [0, 1]) look like [0, 1] images and are an error unless ``assume_range="[-1, 1]"``
says they are [-1, 1] images (e.g. bright generated images); floats above 1 are an error that names
[0, 255]. ``num`` must be an int >= 1; latents must end in the latent dimension.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lebm_jax.core import annealing, exchange, ladder, sampling
from lebm_jax.core.langevin import METHODS
from lebm_jax.core.model import LatentEBM
from lebm_jax.data.images import as_model_images
from lebm_jax.measure.loglik import sweep_spec
from lebm_jax.training import build
from lebm_jax.training import config as config_lib
from lebm_jax.training.checkpoint import Checkpointer, abstract_like
from lebm_jax.training.step import create_train_state

Array = jax.Array


def _count(num, where: str) -> int:
    """``num`` as a Python int >= 1, or a ValueError naming ``where``."""
    try:
        if isinstance(num, bool):
            raise TypeError
        value = operator.index(num)
    except TypeError:
        raise ValueError(f"{where}: num={num!r} must be an int >= 1 (the number of samples)") from None
    if value < 1:
        raise ValueError(f"{where}: num={value} must be an int >= 1 (the number of samples)")
    return value


@dataclasses.dataclass(eq=False)
class Trained:
    config: ml_collections.ConfigDict
    model: LatentEBM
    params: Any  # {"ebm": ..., "gen": ...}
    step: int
    workdir: str
    ladder: Any = None  # (N,) numpy: the adapted TI ladder of a run with ti.adapt_every > 0, at this checkpoint

    @classmethod
    def load(cls, workdir: str, step: int | None = None) -> Trained:
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
            config = config_lib.from_saved(ckpt.saved_config(step))
            model = build.build_model(config)
            template = create_train_state(model, build.make_optimizers(config, 1), jax.random.key(0),
                                          build.initial_ladder(config))
            state = ckpt.restore(step, abstract_like(template), config)
        finally:
            ckpt.close()
        adapted = getattr(state, "ladder", None)
        ladder = None if adapted is None else np.asarray(jax.device_get(adapted.temperatures))
        return cls(config, model, jax.device_get(state.params), int(step), os.path.abspath(workdir), ladder)

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
                lambda p, x, k, ts, s, every, method: sampling.ti_log_likelihood(
                    m, dataclasses.replace(self._posterior_chain, method=method), p, x, k, num_chains=s,
                    temperatures=ts, exchange_every=every),
                static_argnums=(4, 5, 6),
            ),
        }

    def _images(self, x, where: str, assume_range: str | None) -> Array:
        """x checked and converted on the host (see the module docstring) → (B, H, W, C) float32 in [-1, 1]."""
        return jnp.asarray(as_model_images(x, where, self.model.event_shape, assume_range=assume_range))

    # --- the public calls ---------------------------------------------------------------------------
    def prior_latents(self, key: Array, num: int) -> Array:
        """z ~ p_α by the prior chain: (num, nz); num an int >= 1."""
        return self._jitted["prior"](self.params, key, _count(num, "Trained.prior_latents"))

    def generate(self, key: Array, num: int) -> Array:
        """Generated images g_β(z), z ~ p_α: (num, H, W, C) in [-1, 1]; num an int >= 1."""
        return self._jitted["generate"](self.params, key, _count(num, "Trained.generate"))

    def decode(self, z: Array) -> Array:
        """g_β(z) for given latents (..., nz): ValueError unless the last axis is the latent dimension nz."""
        z = jnp.asarray(z, jnp.float32)
        nz = self.model.latent_dim
        if z.ndim < 1 or z.shape[-1] != nz:
            raise ValueError(
                f"Trained.decode: z has shape {tuple(z.shape)}; expected (..., {nz}), the last axis the latent "
                f"dimension model.latent_dim={nz}"
            )
        return self._jitted["decode"](self.params, z)

    def posterior(self, x, key: Array, t: float = 1.0, *, assume_range: str | None = None) -> Array:
        """z ~ π_t(z|x) ∝ p_β(x|z)^t p_α(z) for each image (B, H, W, C) (uint8 or [-1, 1]): (B, nz).

        Floats all in [0, 1] are an error (they look like [0, 1] images) unless ``assume_range="[-1, 1]"``.
        """
        x = self._images(x, "Trained.posterior", assume_range)
        return self._jitted["posterior"](self.params, x, key, jnp.float32(t))

    def reconstruct(self, x, key: Array, *, assume_range: str | None = None) -> Array:
        """g_β(z⁺), z⁺ ~ p(z|x): (B, H, W, C) in [-1, 1]; x as for `posterior`."""
        x = self._images(x, "Trained.reconstruct", assume_range)
        z = self._jitted["posterior"](self.params, x, key, jnp.float32(1.0))
        return self._jitted["decode"](self.params, z)

    def log_likelihood(self, x, key: Array | None = None, *, assume_range: str | None = None,
                       **settings) -> annealing.SweepResult:
        """log p(x) per image by the held-out protocol (`lebm_jax.core.annealing.estimate`, design.md §9):
        TI and AIS from one annealed MALA sweep, with the per-image diagnostics of `annealing.SweepResult`.

        Settings are the run's ``config.loglik`` (num_temps, power, steps_per_rung, ais_substeps,
        num_chains, prior_steps, target_accept), any of them overridden by keyword; ``key`` defaults to
        the protocol's own (``loglik.seed``), as the evaluator uses. x as for `posterior`.
        """
        x = self._images(x, "Trained.log_likelihood", assume_range)
        config = ml_collections.ConfigDict(self.config.loglik.to_dict())
        unknown = sorted(set(settings) - set(config))
        if unknown:
            raise ValueError(f"Trained.log_likelihood: unknown setting(s) {unknown}; known: {sorted(config)}")
        config.update(settings)
        config_lib.validate_loglik(config)
        key = jax.random.split(jax.random.key(config.seed))[0] if key is None else key
        return annealing.estimate(self.model, self.params, x, key, sweep_spec(config))

    def training_log_likelihood(
        self, x, key: Array, num_temps: int | None = None, power: float | None = None, num_chains: int = 1,
        *, temperatures=None, exchange_every: int | None = None, method: str | None = None,
        assume_range: str | None = None,
    ) -> dict:
        """TI estimate of log p(x) per image, the training estimator (`sampling.ti_log_likelihood`):
        {"log_px": (B,), "rung_log_lik": (N, B), "temperatures": (N,)[, "swap_accept": (N − 1, B)][,
        "friel_reliable", "log_px_friel"]} (the Friel-corrected value NaN where `annealing.friel_reliable` refuses
        it).

        The ladder defaults to the run's: its adapted ladder at this checkpoint (``self.ladder``) for a run with
        ``ti.adapt_every`` > 0, else t_i = (i/(N−1))^p with the run's ``ti.num_temps`` and ``ti.power``. Giving
        ``num_temps`` or ``power`` asks for a power ladder (the other from the run); ``temperatures`` gives the
        rungs themselves (increasing from exactly 0 to exactly 1). ``exchange_every`` (default the run's
        ``ti.exchange_every``; 0: none) adds replica exchange, and it must divide the posterior chain's
        num_steps; ``method`` ("ula" or "mala", default the run's) is the posterior chain's. x as for `posterior`.
        """
        where = "Trained.training_log_likelihood"
        x = self._images(x, where, assume_range)
        if temperatures is not None:
            if num_temps is not None or power is not None:
                raise ValueError(f"{where}: give temperatures or num_temps/power, not both")
            ts = ladder.check_temperatures(temperatures, f"{where}: temperatures")
        elif num_temps is None and power is None and self.ladder is not None:
            ts = self.ladder
        else:
            n = int(num_temps if num_temps is not None else self.config.ti.num_temps)
            pw = float(power if power is not None else self.config.ti.power)
            ts = np.asarray(ladder.power_schedule(n, pw))
        every = self.config.ti.exchange_every if exchange_every is None else exchange_every
        exchange.check_exchange_every(every, self._posterior_chain.num_steps, f"{where}: exchange_every")
        method = self._posterior_chain.method if method is None else method
        if method not in METHODS:
            raise ValueError(f"{where}: method={method!r} is not one of {METHODS}")
        return self._jitted["ti"](self.params, x, key, jnp.asarray(ts), int(num_chains), int(every), method)
