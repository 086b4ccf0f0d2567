"""The two learning objectives ("variants"), the interface they share, and their gradients for one batch.

An objective (`Objective`) is two pure functions and the settings they need:

- ``sample(params, x, key) -> Samples``: short-run chains for the prior z⁻ ~ p_α and the posterior(s)
  z⁺, drawn with the parameters held constant (samples are constants to the learning gradient);
  ``key`` is one PRNG key or one per example (B,);
- ``losses(params, x, samples) -> (Losses, Aux)``: the EBM loss (depends on α only), the generator
  loss (depends on β only), and structured auxiliary outputs (`Aux`): the per-example losses, the
  batch values and the per-rung values to log.

Training (`lebm_jax.training.step`), the gradient statistics (`lebm_jax.core.gradstats`), the
evaluators and the benchmark rely on this interface only, never on which objective it is.

Sign conventions (design.md §3): losses are minimised; f_α is a log-density tilt, so the EBM loss

    loss_E = mean_b f_α(z⁻_b) − mean_b f_α(z⁺_b)

has gradient E_prior[∇f] − E_post[∇f] = −∇_α log p(x) in expectation (the prior's log Z_α gives the
first term), and the vanilla generator loss −mean_b log p_β(x_b|z⁺_b) has gradient −∇_β log p(x) by
Fisher's identity.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from lebm_jax.core import exchange, ladder
from lebm_jax.core.langevin import ChainResult, ChainSpec, sample_base, split_keys
from lebm_jax.core.model import LatentEBM

Array = jax.Array
Params = Any

VARIANTS = ("vanilla", "ti")
TI_GRADIENTS = ("pathwise", "fisher")


class Losses(NamedTuple):
    ebm: Array  # scalar (or (B,) per example), depends on α only
    gen: Array  # scalar (or (B,) per example), depends on β only


class Samples(NamedTuple):
    """The chains' draws for one batch, held constant by the losses."""

    z_prior: Array  # (S, B, nz): z⁻ ~ p_α
    z_posterior: Array  # (T, S, B, nz): z ~ π_{t_i}(z|x) per rung; T = 1 (t = 1) for vanilla
    batch: dict  # chain diagnostics logged as batch means: name -> scalar
    rungs: dict  # per-rung chain diagnostics: name -> (T,), or (T − 1,) per neighbouring pair (i, i+1)


class Aux(NamedTuple):
    """What an objective reports besides its losses (all held constant: no gradient flows through).

    per_example: Losses of (B,): each example's EBM and generator loss; their batch means are the losses
                 (the gradient statistics take the variance of these over chain draws).
    batch:       name -> scalar or (B,): logged as its batch mean under ``name``.
    rungs:       name -> (T,): logged per rung as ``name/i``; a (T − 1,) entry is per pair of neighbouring
                 rungs, ``name/i`` for the pair (i, i+1).
    """

    per_example: Losses
    batch: dict
    rungs: dict


class GradientResult(NamedTuple):
    grads: Params  # {"ebm": ∂loss_E/∂α, "gen": ∂loss_G/∂β}
    losses: Losses
    aux: Aux


class Objective(Protocol):
    """What every objective provides (`Vanilla`, `ThermodynamicIntegration`)."""

    model: LatentEBM
    prior_chain: ChainSpec
    posterior_chain: ChainSpec
    num_chains: int  # S: chains per example (and rung)

    def sample_posteriors(self, params: Params, x: Array, keys: Array) -> ChainResult:
        """Posterior chains for ``x`` (B, ...) with one key per example: z (T, S, B, nz)."""

    def sample(self, params: Params, x: Array, key: Array) -> Samples: ...

    def losses(self, params: Params, x: Array, samples: Samples) -> tuple[Losses, Aux]: ...
    # `ThermodynamicIntegration`'s sample/losses also take ``temperatures=`` (N,), the ladder to run on instead
    # of its power ladder (the adaptive ladder, carried in the train state); `loss_and_grads` passes it on.


def _check_num_chains(num_chains: int, name: str) -> None:
    if isinstance(num_chains, bool) or not isinstance(num_chains, int) or num_chains < 1:
        raise ValueError(f"{name}={num_chains!r} must be an int >= 1")


def _chain_diagnostics(prefix: str, res: ChainResult) -> dict:
    return {f"{prefix}_accept": jnp.mean(res.accept_rate), f"{prefix}_grad_norm": jnp.mean(res.grad_norm)}


def example_keys(key: Array, batch: int) -> Array:
    """Per-example keys (B,): ``key`` itself when it already is one key per example, else split from it.

    The training step passes keys derived from each example's global index, so an example's chains
    are the same whichever device or position it has in the batch.
    """
    if key.shape == (batch,):
        return key
    if key.shape != ():
        raise ValueError(f"key of shape {key.shape}: expected one key or one per example ({batch},)")
    return jax.random.split(key, batch)


def sample_prior(objective: Objective, params: Params, keys: Array) -> ChainResult:
    """S·B prior chains z⁻ ~ p_α from π0, shape (S, B, nz); ``keys`` (B,) one per example."""
    model = objective.model
    k0, k = split_keys(keys, 2, key_axis=0)
    z0 = sample_base(k0, (objective.num_chains, keys.shape[0], model.latent_dim), model.prior_sigma, key_axis=1)
    return objective.prior_chain.run(k, z0, lambda z: model.log_prior(params["ebm"], z), key_axis=1)


def sample_power_posteriors(
    model: LatentEBM, chain: ChainSpec, params: Params, x: Array, keys: Array, temperatures: Array, num_chains: int,
    prior_rungs: int = 0, exchange_every: int = 0,
) -> ChainResult | exchange.ExchangeResult:
    """S chains per example and temperature, z ~ π_t(z|x) ∝ p_β(x|z)^t p_α(z), all in one batch.

    x: (B, *event); keys: (B,) one per example; temperatures: (T,). Returns z of shape (T, S, B, nz).
    ``prior_rungs``: the number of leading temperatures that are exactly 0 (the caller vouches for it; a
    power schedule's t_0 is). Their chains target the prior p_α, and their Langevin steps skip the
    generator, whose term 0 · log p_β(x|z) adds nothing: the same chains as without, for (T−k)/T of the
    generator work.
    ``exchange_every``: 0 (the default) runs the chains independently and returns a `ChainResult`. A
    positive value, which must divide ``chain.num_steps``, proposes replica-exchange swaps between
    neighbouring rungs (increasing temperatures) after every ``exchange_every`` Langevin steps and returns an
    `exchange.ExchangeResult`: the same fields plus the pairs' swap acceptance (T − 1, S, B)
    (design.md §3, "Replica exchange"). Each example's swaps draw from its own key.
    """
    batch, nz = x.shape[0], model.latent_dim
    num_temps = temperatures.shape[0]
    if not 0 <= prior_rungs <= num_temps:
        raise ValueError(f"prior_rungs={prior_rungs} must be in [0, {num_temps}]")
    exchange.check_exchange_every(exchange_every, chain.num_steps)
    k0, k = split_keys(keys, 2, key_axis=0)
    z0 = sample_base(k0, (num_temps, num_chains, batch, nz), model.prior_sigma, key_axis=2)
    ts = temperatures[:, None, None]  # (T, 1, 1) against chains (T, S, B)

    def log_density(z):  # (T, S, B, nz) -> (T, S, B)
        if not prior_rungs:
            return model.log_power_posterior(params, x, z, ts)
        ll = ts[prior_rungs:] * model.log_likelihood(params["gen"], x, z[prior_rungs:])  # (T − k, S, B)
        ll = jnp.concatenate([jnp.zeros((prior_rungs,) + ll.shape[1:], ll.dtype), ll])
        return ll + model.log_prior(params["ebm"], z)

    if not exchange_every:
        return chain.run(k, z0, log_density, key_axis=2)
    return exchange.exchange_chain(
        chain, k, z0, lambda z: model.log_likelihood(params["gen"], x, z), lambda z: model.log_prior(params["ebm"], z),
        temperatures, exchange_every, key_axis=2, prior_rungs=prior_rungs)


def _ebm_terms(model: LatentEBM, params_ebm: Params, z_prior: Array, z_post: Array) -> tuple[Array, Array, dict]:
    """Contrastive EBM loss from prior and posterior samples, both (S, B, nz): (loss, per example (B,), stats)."""
    f_prior = model.tilt(params_ebm, z_prior)  # (S, B)
    f_post = model.tilt(params_ebm, z_post)  # (S, B)
    per_example = jnp.mean(f_prior, 0) - jnp.mean(f_post, 0)  # (B,)
    stats = {"f_prior": jnp.mean(f_prior), "f_posterior": jnp.mean(f_post)}
    return jnp.mean(per_example), per_example, stats


@dataclasses.dataclass(frozen=True, eq=False)
class Vanilla:
    """Maximum likelihood with Fisher's identity (Pang et al. 2020).

        loss_G = −mean_b log p_β(x_b | z⁺_b),   loss_E = mean f_α(z⁻) − mean f_α(z⁺),
        z⁻ ~ p_α (prior chain), z⁺ ~ p(z|x) (posterior chain), S chains of each per example.
    """

    model: LatentEBM
    prior_chain: ChainSpec
    posterior_chain: ChainSpec
    num_chains: int = 1

    def __post_init__(self):
        self.prior_chain.validate("prior_chain")
        self.posterior_chain.validate("posterior_chain")
        _check_num_chains(self.num_chains, "num_chains")

    def sample_posteriors(self, params: Params, x: Array, keys: Array) -> ChainResult:
        """The posterior chains (one rung, t = 1): z (1, S, B, nz); keys (B,) one per example."""
        return sample_power_posteriors(self.model, self.posterior_chain, params, x, keys, jnp.ones((1,)),
                                       self.num_chains)

    def sample(self, params: Params, x: Array, key: Array) -> Samples:
        self.model.check_data(x)
        k_prior, k_post = split_keys(example_keys(key, x.shape[0]), 2, key_axis=0)  # each (B,)
        prior = sample_prior(self, params, k_prior)
        post = self.sample_posteriors(params, x, k_post)  # the single rung t = 1
        diag = {**_chain_diagnostics("prior", prior),
                **_chain_diagnostics("posterior", jax.tree.map(lambda a: a[0], post))}
        return Samples(prior.z, post.z, diag, {})

    def losses(self, params: Params, x: Array, samples: Samples) -> tuple[Losses, Aux]:
        z_post = samples.z_posterior[0]  # (S, B, nz)
        ell = self.model.log_likelihood(params["gen"], x, z_post)  # (S, B)
        post_ll = jnp.mean(ell, 0)  # (B,)
        loss_ebm, per_example_ebm, ebm_stats = _ebm_terms(self.model, params["ebm"], samples.z_prior, z_post)
        aux = Aux(
            per_example=jax.lax.stop_gradient(Losses(per_example_ebm, -post_ll)),
            batch={"posterior_log_lik": jax.lax.stop_gradient(post_ll), **jax.lax.stop_gradient(ebm_stats),
                   **samples.batch},
            rungs=dict(samples.rungs),
        )
        return Losses(loss_ebm, -jnp.mean(post_ll)), aux


@dataclasses.dataclass(frozen=True, eq=False)
class ThermodynamicIntegration:
    """Likelihood by thermodynamic integration over power posteriors π_t ∝ p_β(x|z)^t p_α(z).

        log p̂(x) = Σ_i ½ (t_i − t_{i−1}) (E_i + E_{i−1}),   E_i = mean_s log p_β(x | z_{i,s}),
        t_i = (i/(N−1))^p, one independent chain per rung, chain and example (all rungs in one batch).

    Generator gradient, ``gradient``:
      "pathwise" (the study's): ∇_β of −log p̂(x) with the samples held constant, i.e. an estimate of
        −∫_0^1 E_t[∇_β ℓ] dt. This is NOT the gradient of log p(x): it mixes gradients from tempered
        posteriors and ignores how π_t moves with β; its bias and variance depend on the schedule power p.
      "fisher": adds the covariance term of d/dβ E_t[ℓ] = E_t[∇_β ℓ] + t Cov_t(ℓ, ∇_β ℓ), estimated
        over the S ≥ 2 chains of each example (never across examples). Integrated over t this is
        Fisher's identity, so the estimate is unbiased for the gradient of the trapezoid on the ladder.
    EBM loss: the vanilla contrastive term with the t = 1 rung as z⁺.

    ``exchange_every`` > 0 adds replica exchange between neighbouring rungs after every ``exchange_every``
    posterior Langevin steps (it must divide them); each pair's swap acceptance is logged as
    ``swap_accept/i`` for the pair (i, i+1). 0, the default, leaves the rungs' chains independent.

    ``temperatures`` (N,), given to ``sample`` and ``losses``, replaces the power ladder (it must have
    t_0 = 0 exactly). ``adapt_every`` > 0 asks the training step to carry an adaptive ladder
    (`ladder.AdaptiveLadder`, re-placed every ``adapt_every`` steps from a moving average of rate
    ``adapt_decay``, design.md §3 "Adaptive ladder") and pass it here; the objective itself only reads it.
    """

    model: LatentEBM
    prior_chain: ChainSpec
    posterior_chain: ChainSpec
    num_temps: int = 10
    power: float = 1.0
    gradient: str = "pathwise"
    num_chains: int = 1
    exchange_every: int = 0
    adapt_every: int = 0
    adapt_decay: float = 0.9

    def __post_init__(self):
        self.prior_chain.validate("prior_chain")
        self.posterior_chain.validate("posterior_chain")
        ladder.check_ladder(self.num_temps, self.power)
        ladder.check_adaptation(self.adapt_every, self.adapt_decay)
        _check_num_chains(self.num_chains, "ti.num_chains")
        exchange.check_exchange_every(self.exchange_every, self.posterior_chain.num_steps, "ti.exchange_every")
        if self.gradient not in TI_GRADIENTS:
            raise ValueError(f"ti.gradient={self.gradient!r} is not one of {TI_GRADIENTS}")
        if self.gradient == "fisher" and self.num_chains < 2:
            raise ValueError(
                f"ti.num_chains={self.num_chains!r}: ti.gradient='fisher' estimates a covariance over the "
                "chains of each example and needs at least 2"
            )

    @property
    def temperatures(self) -> Array:
        return ladder.power_schedule(self.num_temps, self.power)

    def _ladder(self, temperatures: Array | None) -> Array:
        if temperatures is None:
            return self.temperatures
        if temperatures.shape != (self.num_temps,):
            raise ValueError(f"temperatures of shape {temperatures.shape}: expected ({self.num_temps},)")
        return temperatures

    def sample_posteriors(self, params: Params, x: Array, keys: Array, temperatures: Array | None = None
                          ) -> ChainResult | exchange.ExchangeResult:
        """The ladder's chains, one batch over all rungs: z (T, S, B, nz); keys (B,) one per example.
        t_0 = 0 exactly, so the first rung's chains run without the generator. With ``exchange_every`` > 0
        an `exchange.ExchangeResult`, which adds the swap acceptance (T − 1, S, B)."""
        return sample_power_posteriors(self.model, self.posterior_chain, params, x, keys, self._ladder(temperatures),
                                       self.num_chains, prior_rungs=1, exchange_every=self.exchange_every)

    def sample(self, params: Params, x: Array, key: Array, temperatures: Array | None = None) -> Samples:
        self.model.check_data(x)
        k_prior, k_post = split_keys(example_keys(key, x.shape[0]), 2, key_axis=0)  # each (B,)
        prior = sample_prior(self, params, k_prior)
        rungs = self.sample_posteriors(params, x, k_post, temperatures)
        diag = {
            **_chain_diagnostics("prior", prior),
            **_chain_diagnostics("posterior", jax.tree.map(lambda a: a[-1], rungs)),
        }
        per_rung = {"rung_accept": jnp.mean(rungs.accept_rate, axis=(1, 2))}  # (T,)
        if self.exchange_every:
            per_rung["swap_accept"] = jnp.mean(rungs.swap_accept, axis=(1, 2))  # (T − 1,): pair (i, i+1)
        return Samples(prior.z, rungs.z, diag, per_rung)

    def losses(self, params: Params, x: Array, samples: Samples, temperatures: Array | None = None
               ) -> tuple[Losses, Aux]:
        ts = self._ladder(temperatures)
        ell = self.model.log_likelihood(params["gen"], x, samples.z_posterior)  # (T, S, B)
        extra = None
        if self.gradient == "fisher":
            ell_c = jax.lax.stop_gradient(ell)
            dev = ell_c - jnp.mean(ell_c, axis=1, keepdims=True)  # (T, S, B)
            # Value 0, gradient t · Ĉov_s(ℓ, ∇_β ℓ) with the unbiased (S − 1) normaliser.
            cov = jnp.sum(dev * (ell - ell_c), axis=1) / (self.num_chains - 1)  # (T, B)
            extra = ts[:, None] * cov
        est = ladder.ti_estimate(ts, ell, extra)
        loss_ebm, per_example_ebm, ebm_stats = _ebm_terms(
            self.model, params["ebm"], samples.z_prior, samples.z_posterior[-1])
        const = jax.lax.stop_gradient
        log_px = const(est.log_px)
        batch = {"log_px": log_px, "posterior_log_lik": const(est.rung_mean[-1]), **const(ebm_stats),
                 **samples.batch}
        rungs = {"rung_log_lik": const(jnp.mean(est.rung_mean, axis=1)), **samples.rungs}  # (T,) each
        if est.rung_var is not None:
            rungs["rung_var"] = const(jnp.mean(est.rung_var, axis=1))
        aux = Aux(per_example=const(Losses(per_example_ebm, -log_px)), batch=batch, rungs=rungs)
        return Losses(loss_ebm, -jnp.mean(est.log_px)), aux


def make_objective(
    variant: str,
    model: LatentEBM,
    *,
    prior_chain: ChainSpec,
    posterior_chain: ChainSpec,
    num_chains: int = 1,
    num_temps: int = 10,
    power: float = 1.0,
    gradient: str = "pathwise",
    exchange_every: int = 0,
    adapt_every: int = 0,
    adapt_decay: float = 0.9,
) -> Objective:
    """The objective named ``variant`` ("vanilla" or "ti"); ladder, exchange and adaptation settings apply to
    "ti" only."""
    if variant == "vanilla":
        return Vanilla(model, prior_chain, posterior_chain, num_chains)
    if variant == "ti":
        return ThermodynamicIntegration(model, prior_chain, posterior_chain, num_temps, power, gradient, num_chains,
                                        exchange_every, adapt_every, adapt_decay)
    raise ValueError(f"variant={variant!r} is not one of {VARIANTS}")


def loss_and_grads(objective: Objective, params: Params, x: Array, key: Array,
                   temperatures: Array | None = None) -> GradientResult:
    """Both parameter gradients for one batch, from one chain run and one backward pass.

    Samples are drawn at ``stop_gradient(params)``; the gradient of loss_E + loss_G is taken with them
    fixed. Since loss_E depends on α only and loss_G on β only, its "ebm" part is ∂loss_E/∂α and its
    "gen" part ∂loss_G/∂β. ``temperatures`` (ti only): the ladder to run on instead of the objective's own.
    """
    ladder_arg = {} if temperatures is None else {"temperatures": temperatures}
    samples = objective.sample(jax.lax.stop_gradient(params), x, key, **ladder_arg)

    def total(p):
        losses, aux = objective.losses(p, x, samples, **ladder_arg)
        return losses.ebm + losses.gen, (losses, aux)

    (_, (losses, aux)), grads = jax.value_and_grad(total, has_aux=True)(params)
    return GradientResult(grads, losses, aux)
