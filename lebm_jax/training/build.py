"""The objects a config describes: the model, its chains, the objective and the optimisers.

Every consumer of a config (training, `Trained`, the evaluators' factory, the benchmark) builds these
here, so a run, its checkpoint and its offline evaluation use the same model, chains and ladder.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import ml_collections
import optax

from lebm_jax.core import backend, ladder
from lebm_jax.core.langevin import ChainSpec
from lebm_jax.core.model import LatentEBM, image_model
from lebm_jax.core.objectives import Objective, make_objective


def build_model(config: ml_collections.ConfigDict) -> LatentEBM:
    m = config.model
    return image_model(
        (config.data.image_size, config.data.image_size, config.data.channels),
        m.latent_dim,
        ngf=m.ngf,
        generator_widths=tuple(m.generator_widths) or None,
        ebm_hidden=m.ebm_hidden,
        ebm_depth=m.ebm_depth,
        ebm_activation=m.ebm_activation,
        prior_sigma=m.prior_sigma,
        lik_sigma=m.lik_sigma,
        generator_dtype=m.generator_dtype,
    )


def chain_spec(chain_config, *, through_generator: bool) -> ChainSpec:
    """The ChainSpec of a chain config (``prior_chain`` / ``posterior_chain``), compiled the way
    `backend.chain_unroll` says is fastest for a chain whose score does (or does not) run the generator."""
    steps = int(chain_config.num_steps)
    unroll = backend.chain_unroll(steps, through_generator)
    return ChainSpec(steps, float(chain_config.step_size), str(chain_config.method), unroll)


def prior_chain(config: ml_collections.ConfigDict) -> ChainSpec:
    """The prior chain z ~ p_α (its score is the EBM's only)."""
    return chain_spec(config.prior_chain, through_generator=False)


def posterior_chain(config: ml_collections.ConfigDict) -> ChainSpec:
    """The posterior chains z ~ π_t(z|x) (their score runs the generator)."""
    return chain_spec(config.posterior_chain, through_generator=True)


def build_objective(config: ml_collections.ConfigDict, model: LatentEBM) -> Objective:
    ti = config.ti
    return make_objective(
        config.variant,
        model,
        prior_chain=prior_chain(config),
        posterior_chain=posterior_chain(config),
        num_chains=ti.num_chains if config.variant == "ti" else 1,
        num_temps=ti.num_temps,
        power=ti.power,
        gradient=ti.gradient,
        exchange_every=ti.exchange_every,
        adapt_every=ti.adapt_every,
        adapt_decay=ti.adapt_decay,
    )


def initial_ladder(config: ml_collections.ConfigDict) -> ladder.AdaptiveLadder | None:
    """The adaptive ladder a ti run with ``ti.adapt_every`` > 0 starts from (its power ladder); else None."""
    if config.variant != "ti" or not config.ti.adapt_every:
        return None
    return ladder.initial_adaptive_ladder(config.ti.num_temps, config.ti.power)


def learning_rates(config: ml_collections.ConfigDict, steps_per_epoch: int) -> dict[str, Callable]:
    """lr(step) = lr0 · decay^⌊step / steps_per_epoch⌋ for the EBM and the generator."""
    return {
        name: optax.exponential_decay(lr, steps_per_epoch, config.optim.lr_decay, staircase=True)
        for name, lr in (("ebm", config.optim.lr_ebm), ("gen", config.optim.lr_gen))
    }


def make_optimizers(config: ml_collections.ConfigDict, steps_per_epoch: int) -> dict[str, optax.GradientTransformation]:
    lrs = learning_rates(config, steps_per_epoch)
    return {name: optax.adam(lrs[name], b1=config.optim.b1, b2=config.optim.b2) for name in ("ebm", "gen")}


class RunKeys(NamedTuple):
    """Every PRNG key of a run, from ``config.seed`` alone; an evaluator's key at step n is
    ``fold_in(evaluators[name], n)``, during training and offline alike."""

    init: jax.Array  # parameter initialisation
    steps: jax.Array  # training step n uses fold_in(steps, n)
    samples: jax.Array  # the sample grid at step n: fold_in(samples, n)
    evaluators: dict  # evaluator name -> key


def run_keys(seed: int) -> RunKeys:
    k_init, k_steps, k_heldout, k_samples = jax.random.split(jax.random.key(seed), 4)
    k_quality, k_gradstats = jax.random.split(jax.random.fold_in(k_heldout, 2**32 - 1))  # no step reaches it
    # The log-likelihood protocol draws from config.loglik.seed, the same for every run; its key here is unused.
    k_loglik = jax.random.fold_in(k_heldout, 2**32 - 2)
    return RunKeys(k_init, k_steps, k_samples,
                   {"heldout": k_heldout, "sample_quality": k_quality, "gradstats": k_gradstats, "loglik": k_loglik})


def evaluator_key(keys: RunKeys, name: str, step: int) -> jax.Array:
    """The key evaluator ``name`` is called with at ``step``."""
    return jax.random.fold_in(keys.evaluators[name], step)
