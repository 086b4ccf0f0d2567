"""The latent EBM as pure density functions.

    p_α(z)    = exp(f_α(z)) π0(z) / Z_α,          π0 = N(0, σ0² I)
    p_β(x|z)  = N(x; g_β(z), σ² I)
    π_t(z|x) ∝ p_β(x|z)^t p_α(z),                 t ∈ [0, 1]

Sign convention: f_α is a log-density *tilt* (higher = more likely). Pang et al.'s code returns an
energy E = −f; nothing in this project does.

`LatentEBM` binds a tilt network and a generator (any flax modules with the right shapes: the MLP and
transposed-conv generator for images, or the quadratic tilt and linear generator of the exactly
solvable model) to these densities. Parameters are ``{"ebm": variables_α, "gen": variables_β}``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lebm_jax.core import networks

Array = jax.Array
Params = Any


def log_base_density(z: Array, sigma: float) -> Array:
    """log π0(z) = −||z||²/(2σ0²) − (nz/2) log(2π σ0²), per latent: (..., nz) -> (...)."""
    nz = z.shape[-1]
    return -0.5 * jnp.sum(z**2, axis=-1) / sigma**2 - 0.5 * nz * math.log(2 * math.pi * sigma**2)


def gaussian_log_likelihood(x: Array, mean: Array, sigma: float, event_ndim: int) -> Array:
    """log N(x; mean, σ² I) summed over the last ``event_ndim`` axes, constant included.

    −||x − mean||²/(2σ²) − (D/2) log(2πσ²), D = number of entries in one event (pixels × channels).
    ``x`` and ``mean`` broadcast against each other.
    """
    axes = tuple(range(-event_ndim, 0))
    sq = jnp.sum((x - mean) ** 2, axis=axes)
    d = math.prod(jnp.broadcast_shapes(x.shape, mean.shape)[-event_ndim:]) if event_ndim else 1
    return -0.5 * sq / sigma**2 - 0.5 * d * math.log(2 * math.pi * sigma**2)


@dataclasses.dataclass(frozen=True, eq=False)
class LatentEBM:
    """A latent EBM: tilt network f_α, generator g_β, base scale σ0 and noise scale σ.

    Attributes:
      tilt_net: flax module, z (..., nz) -> f_α(z) (...). A log-density tilt, not an energy.
      generator_net: flax module, z (n, nz) -> g_β(z) (n, *event_shape).
      latent_dim: nz.
      event_shape: shape of one data point, e.g. (32, 32, 3) or (D,).
      prior_sigma: σ0 of the base density π0.
      lik_sigma: σ of the Gaussian observation noise.
    """

    tilt_net: nn.Module
    generator_net: nn.Module
    latent_dim: int
    event_shape: tuple[int, ...]
    prior_sigma: float = 1.0
    lik_sigma: float = 0.3

    def __post_init__(self):
        object.__setattr__(self, "event_shape", tuple(int(d) for d in self.event_shape))
        if not isinstance(self.latent_dim, int) or self.latent_dim < 1:
            raise ValueError(f"latent_dim={self.latent_dim!r} must be a positive int")
        for name in ("prior_sigma", "lik_sigma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, numbers.Real) and value > 0 and math.isfinite(value)):
                raise ValueError(f"{name}={value!r} must be a finite number > 0")

    @property
    def event_ndim(self) -> int:
        return len(self.event_shape)

    @property
    def data_dim(self) -> int:
        """D: entries in one data point."""
        return math.prod(self.event_shape)

    def init(self, key: Array) -> Params:
        """Initial parameters {"ebm": ..., "gen": ...}."""
        k_ebm, k_gen = jax.random.split(key)
        z = jnp.zeros((1, self.latent_dim), jnp.float32)
        params = {"ebm": self.tilt_net.init(k_ebm, z), "gen": self.generator_net.init(k_gen, z)}
        out = self.generator_net.apply(params["gen"], z)
        if out.shape[1:] != self.event_shape:
            raise ValueError(
                f"the generator makes data of shape {out.shape[1:]} but event_shape={self.event_shape}"
            )
        return params

    # --- shape checks (static: run once at trace time) ---------------------------------------
    def check_latent(self, z: Array) -> None:
        if z.ndim < 1 or z.shape[-1] != self.latent_dim:
            raise ValueError(
                f"latent shape {tuple(z.shape)} does not fit the model: the last axis must be "
                f"latent_dim={self.latent_dim}"
            )

    def check_data(self, x: Array, batch_ndim: int = 1) -> None:
        if x.ndim != batch_ndim + self.event_ndim or tuple(x.shape[batch_ndim:]) != self.event_shape:
            raise ValueError(
                f"data shape {tuple(x.shape)} does not fit the model: expected {batch_ndim} batch "
                f"axis/axes followed by event_shape={self.event_shape}"
            )

    # --- networks ----------------------------------------------------------------------------
    def tilt(self, params_ebm: Params, z: Array) -> Array:
        """f_α(z): (..., nz) -> (...)."""
        self.check_latent(z)
        return self.tilt_net.apply(params_ebm, z)

    def generate(self, params_gen: Params, z: Array) -> Array:
        """g_β(z): (..., nz) -> (..., *event_shape); leading axes are flattened into one batch."""
        self.check_latent(z)
        lead = z.shape[:-1]
        flat = z.reshape((-1, self.latent_dim))  # (n, nz)
        return self.generator_net.apply(params_gen, flat).reshape(lead + self.event_shape)

    # --- densities ---------------------------------------------------------------------------
    def log_prior(self, params_ebm: Params, z: Array) -> Array:
        """log p_α(z) + log Z_α = f_α(z) + log π0(z): (..., nz) -> (...)."""
        return self.tilt(params_ebm, z) + log_base_density(z, self.prior_sigma)

    def log_likelihood(self, params_gen: Params, x: Array, z: Array) -> Array:
        """log p_β(x|z) with its constant; x (..., *event) broadcasts against g(z) (..., *event) -> (...)."""
        return gaussian_log_likelihood(x, self.generate(params_gen, z), self.lik_sigma, self.event_ndim)

    def log_power_posterior(self, params: Params, x: Array, z: Array, t: Array | float) -> Array:
        """t log p_β(x|z) + log p_α(z), unnormalised in z; t broadcasts against z.shape[:-1]."""
        return t * self.log_likelihood(params["gen"], x, z) + self.log_prior(params["ebm"], z)

    def power_posterior_score(self, params: Params, x: Array, z: Array, t: Array | float) -> Array:
        """∇_z log π_t(z|x) = t ∇_z log p_β(x|z) + ∇f_α(z) − z/σ0², same shape as z."""
        return jax.grad(lambda zz: jnp.sum(self.log_power_posterior(params, x, zz, t)))(z)


def image_model(
    image_shape: Sequence[int],
    latent_dim: int = 100,
    *,
    ngf: int = 64,
    generator_widths: Sequence[int] | None = None,
    ebm_hidden: int = 200,
    ebm_depth: int = 2,
    ebm_activation: str = "gelu",
    prior_sigma: float = 1.0,
    lik_sigma: float = 0.3,
    generator_dtype: str = "float32",
) -> LatentEBM:
    """The image model of Pang et al.: MLP tilt over latents and a transposed-conv generator.

    ``image_shape`` is (H, W, C) with H = W a supported size and C in (1, 3). ``generator_dtype`` is the
    type the generator's convolutions compute in ("float32" or "bfloat16"); parameters stay float32.
    """
    image_shape = tuple(image_shape)
    if len(image_shape) != 3 or image_shape[0] != image_shape[1]:
        raise ValueError(f"image_shape={image_shape!r} must be (H, W, C) with H == W")
    networks.generator_layout(image_shape[0])  # raises on an unsupported size, naming it
    gen = networks.ConvGenerator(
        image_size=image_shape[0],
        channels=image_shape[2],
        ngf=ngf,
        widths=None if generator_widths is None else tuple(generator_widths),
        dtype=jnp.dtype(generator_dtype),
    )
    tilt = networks.EnergyMLP(hidden=ebm_hidden, depth=ebm_depth, activation=ebm_activation)
    return LatentEBM(tilt, gen, latent_dim, image_shape, prior_sigma, lik_sigma)
