"""The experiment configuration: its fields, defaults and validation.

`base_config()` returns the reference settings (Pang et al.'s official SVHN code, design.md §8); the
files in ``configs/`` start from it and change a few fields. `validate(config)` runs before any work
and raises ValueError naming the first field with a bad value. Unknown keys are rejected earlier by
the locked ConfigDict (``--config.modle.ngf=...`` fails in flag parsing).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import ml_collections

from lebm_jax.core import ladder
from lebm_jax.core.langevin import METHODS
from lebm_jax.core.networks import generator_layout
from lebm_jax.core.objectives import TI_GRADIENTS, VARIANTS
from lebm_jax.measure.features import FEATURE_SPACES

DATASETS = ("digits", "mnist", "fashion_mnist", "svhn", "cifar10", "celeba", "npz", "folder")
GENERATOR_DTYPES = ("float32", "bfloat16")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.variant = "vanilla"  # "vanilla" | "ti"

    c.data = ml_collections.ConfigDict()
    c.data.name = "svhn"  # one of DATASETS
    c.data.image_size = 32
    c.data.channels = 3
    c.data.path = ""  # .npz file or image folder for name = "npz" / "folder"; tfds data_dir otherwise
    c.data.test_fraction = 0.1  # held-out share for data sets without a test split (npz, folder)

    c.model = ml_collections.ConfigDict()
    c.model.latent_dim = 100
    c.model.ngf = 64
    c.model.generator_widths = ()  # empty: ngf·(8, 4, 2, 1)[:L]
    c.model.ebm_hidden = 200
    c.model.ebm_depth = 2
    c.model.ebm_activation = "gelu"
    c.model.prior_sigma = 1.0  # σ0
    c.model.lik_sigma = 0.3  # σ
    c.model.generator_dtype = "float32"  # type the generator's convolutions compute in: "float32" | "bfloat16"
    #                                       (bfloat16: faster on GPU/TPU; parameters and chains stay float32)

    c.prior_chain = ml_collections.ConfigDict(dict(num_steps=60, step_size=0.4, method="ula"))
    c.posterior_chain = ml_collections.ConfigDict(dict(num_steps=20, step_size=0.1, method="ula"))

    c.ti = ml_collections.ConfigDict()
    c.ti.num_temps = 10
    c.ti.power = 1.0
    c.ti.gradient = "pathwise"  # "pathwise" | "fisher"
    c.ti.num_chains = 1  # chains per example and rung (fisher needs >= 2)
    c.ti.exchange_every = 0  # posterior Langevin steps between replica-exchange rounds of neighbouring rungs;
    #                          0 = none (the rungs' chains independent); must divide posterior_chain.num_steps
    c.ti.adapt_every = 0  # training steps between placements of an adaptive ladder at equal thermodynamic length
    #                       ∫√V_t dt per interval, from the steps' rung statistics (design.md §3); it starts
    #                       from the power ladder, lives in the train state and is logged as rung_t/i;
    #                       0 = the fixed power ladder t_i = (i/(N-1))^p
    c.ti.adapt_decay = 0.9  # rate of the moving average of the rung statistics between placements (weight of
    #                         the past per step; 0 = the last step only); used only when adapt_every > 0

    c.optim = ml_collections.ConfigDict()
    c.optim.lr_ebm = 2e-5
    c.optim.lr_gen = 1e-4
    c.optim.b1 = 0.5
    c.optim.b2 = 0.999
    c.optim.lr_decay = 0.998  # multiplied in once per epoch

    c.batch_size = 100  # global, over all devices and hosts
    c.num_steps = 40_000  # training steps (one step = one global batch)
    c.steps_per_dispatch = 1  # training steps per compiled call
    c.log_every = 100
    c.checkpoint_every = 1000
    c.sample_every = 1000
    c.max_to_keep = 3
    c.num_samples = 64  # images in each sample grid
    c.num_heldout = 500  # test images for the held-out reconstruction error and log-likelihood

    # Sample quality during training (lebm_jax.measure.sample_quality): generated images against the training split.
    c.eval = ml_collections.ConfigDict()
    c.eval.every = 5000  # steps between evaluations; 0 = never during training
    c.eval.num_samples = 10_000  # generated images per evaluation
    c.eval.feature_space = "auto"  # one of FEATURE_SPACES; "auto": inception when its weights are on disk,
    #                                else the data set's own classifier when it has labels, else none
    c.eval.max_reference = 50_000  # training images whose features form the reference statistics
    c.eval.kid_subsets = 100
    c.eval.kid_subset_size = 1000
    c.eval.batch_size = 500  # images per generation / feature batch
    c.eval.infinity = False  # also FID∞ / KID∞ (costs several FD and KID evaluations)
    c.eval.fd_bootstrap = 20  # resamples of the generated set for the FD's standard error; 0 = none

    # The held-out log-likelihood protocol (lebm_jax.measure.loglik, design.md §9): one ladder, sampler and
    # set of keys for every run, whatever its variant and training ladder, with TI and AIS on the same sweep
    # and the bias and variance of the run's own training estimator against it.
    c.loglik = ml_collections.ConfigDict()
    c.loglik.every = 0  # steps between protocol evaluations during training; 0 = never
    c.loglik.num_examples = 100  # the first held-out (test) images
    c.loglik.num_temps = 101  # rungs; odd, so that every other rung is the half ladder of the convergence check
    c.loglik.power = 4.0  # t_i = (i/(N-1))^p: dense near the prior, where E_t is steep
    c.loglik.steps_per_rung = 10  # MALA steps at each rung of the TI ladder
    c.loglik.ais_substeps = 40  # AIS rungs per TI interval (one MALA step at each but the last)
    c.loglik.num_chains = 4  # sweeps per example
    c.loglik.prior_steps = 100  # MALA steps on p_α before the first rung
    c.loglik.target_accept = 0.6  # MALA acceptance the pilot sweep tunes each rung's step size to
    c.loglik.train_draws = 4  # draws of the run's own training estimator for its bias and variance; 0 = skip
    c.loglik.seed = 0  # the protocol's keys: the same for every run, whatever config.seed

    # Variance of the learning gradient during training (lebm_jax.core.gradstats, design.md §5).
    c.gradstats = ml_collections.ConfigDict()
    c.gradstats.every = 1000  # steps between measurements; 0 = never
    c.gradstats.num_draws = 8  # R: independent (batch, chain) draws, and chain draws per fixed batch
    c.gradstats.num_batches = 1  # M: fixed batches for the MCMC variance
    c.gradstats.chunk = 0  # draws computed at once; 0 = all R at once
    return c


def from_file(path) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file (e.g. ``configs/svhn.py``), as a study config builds on one."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def from_saved(saved: dict) -> ml_collections.ConfigDict:
    """A config saved with a run (config.json / the checkpoint's copy), with fields added since then
    taken from `base_config()` so older runs still load."""

    def merge(base: ml_collections.ConfigDict, values: dict) -> None:
        for name, value in values.items():
            if isinstance(value, dict) and name in base and isinstance(base[name], ml_collections.ConfigDict):
                merge(base[name], value)
            else:
                base[name] = value

    config = base_config()
    with config.unlocked():
        merge(config, saved)
    return config


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value)


def validate_loglik(c: ml_collections.ConfigDict, bad=None) -> None:
    """Raises ValueError naming the first invalid field of a ``loglik`` block (the held-out protocol)."""
    if bad is None:
        def bad(field: str, value, why: str):
            raise ValueError(f"config.{field}={value!r}: {why}")

    for field in ("every", "train_draws", "seed"):
        if not (_positive_int(c[field]) or c[field] == 0):
            bad(f"loglik.{field}", c[field], "must be an int >= 0")
    if c.train_draws == 1:
        bad("loglik.train_draws", c.train_draws, "must be 0 (skip) or >= 2 (a variance needs two draws)")
    for field in ("num_examples", "steps_per_rung", "ais_substeps", "prior_steps"):
        if not _positive_int(c[field]):
            bad(f"loglik.{field}", c[field], "must be an int >= 1")
    if not (_positive_int(c.num_chains) and c.num_chains >= 2):
        bad("loglik.num_chains", c.num_chains, "must be an int >= 2 (the AIS weights and rung variances need two)")
    if not (_positive_int(c.num_temps) and c.num_temps >= 5 and c.num_temps % 2 == 1):
        bad("loglik.num_temps", c.num_temps, "must be an odd int >= 5 (every other rung forms the half ladder)")
    if not _positive(c.power):
        bad("loglik.power", c.power, "must be a finite number > 0")
    if not (isinstance(c.target_accept, float) and 0.0 < c.target_accept < 1.0):
        bad("loglik.target_accept", c.target_accept, "must be a float in (0, 1)")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Raises ValueError naming the first invalid field; returns the config."""

    def bad(field: str, value, why: str):
        raise ValueError(f"config.{field}={value!r}: {why}")

    if config.variant not in VARIANTS:
        bad("variant", config.variant, f"must be one of {VARIANTS}")
    if config.data.name not in DATASETS:
        bad("data.name", config.data.name, f"must be one of {DATASETS}")
    if config.data.channels not in (1, 3):
        bad("data.channels", config.data.channels, "must be 1 or 3")
    if config.data.name in ("npz", "folder") and not config.data.path:
        bad("data.path", config.data.path, f"data.name={config.data.name!r} needs a path")
    if not 0.0 <= config.data.test_fraction < 1.0:
        bad("data.test_fraction", config.data.test_fraction, "must be in [0, 1)")
    try:  # generator_layout raises naming image_size when it is unsupported
        _, doublings = generator_layout(config.data.image_size)
    except ValueError as e:
        raise ValueError(f"config.data.{e}") from None
    widths = tuple(config.model.generator_widths)
    if widths and len(widths) != doublings:
        bad("model.generator_widths", widths, f"needs {doublings} entries for image_size={config.data.image_size}")
    for field in ("latent_dim", "ngf", "ebm_hidden", "ebm_depth"):
        if not _positive_int(config.model[field]):
            bad(f"model.{field}", config.model[field], "must be an int >= 1")
    for field in ("prior_sigma", "lik_sigma"):
        if not _positive(config.model[field]):
            bad(f"model.{field}", config.model[field], "must be a finite number > 0")
    if config.model.generator_dtype not in GENERATOR_DTYPES:
        bad("model.generator_dtype", config.model.generator_dtype, f"must be one of {GENERATOR_DTYPES}")
    for chain in ("prior_chain", "posterior_chain"):
        spec = config[chain]
        if not (isinstance(spec.num_steps, int) and spec.num_steps >= 0):
            bad(f"{chain}.num_steps", spec.num_steps, "must be an int >= 0")
        if not _positive(spec.step_size):
            bad(f"{chain}.step_size", spec.step_size, "must be a finite number > 0")
        if spec.method not in METHODS:
            bad(f"{chain}.method", spec.method, f"must be one of {METHODS}")
    try:
        ladder.check_ladder(config.ti.num_temps, config.ti.power)
    except ValueError as e:
        raise ValueError(f"config.{e}") from None
    if config.ti.gradient not in TI_GRADIENTS:
        bad("ti.gradient", config.ti.gradient, f"must be one of {TI_GRADIENTS}")
    if not _positive_int(config.ti.num_chains):
        bad("ti.num_chains", config.ti.num_chains, "must be an int >= 1")
    if config.ti.gradient == "fisher" and config.ti.num_chains < 2:
        bad("ti.num_chains", config.ti.num_chains, "ti.gradient='fisher' needs at least 2 chains per example")
    every = config.ti.exchange_every
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        bad("ti.exchange_every", every, "must be an int >= 0 (0: no replica exchange)")
    if every and config.posterior_chain.num_steps % every:
        bad("ti.exchange_every", every, f"must divide posterior_chain.num_steps={config.posterior_chain.num_steps}")
    try:
        ladder.check_adaptation(config.ti.adapt_every, config.ti.adapt_decay)
    except ValueError as e:
        raise ValueError(f"config.{e}") from None
    for field in ("lr_ebm", "lr_gen"):
        if not _positive(config.optim[field]):
            bad(f"optim.{field}", config.optim[field], "must be a finite number > 0")
    for field in ("b1", "b2"):
        if not 0.0 <= config.optim[field] < 1.0:
            bad(f"optim.{field}", config.optim[field], "must be in [0, 1)")
    if not 0.0 < config.optim.lr_decay <= 1.0:
        bad("optim.lr_decay", config.optim.lr_decay, "must be in (0, 1]")
    for field in ("batch_size", "num_steps", "steps_per_dispatch", "log_every", "checkpoint_every",
                  "sample_every", "max_to_keep", "num_samples", "num_heldout"):
        if not _positive_int(config[field]):
            bad(field, config[field], "must be an int >= 1")
    for field in ("log_every", "checkpoint_every", "sample_every"):
        if config[field] % config.steps_per_dispatch:
            bad("steps_per_dispatch", config.steps_per_dispatch, f"must divide {field}={config[field]}")
    for group, field in (("eval", "every"), ("gradstats", "every"), ("gradstats", "chunk")):
        value = config[group][field]
        if not (_positive_int(value) or value == 0) or isinstance(value, bool):
            bad(f"{group}.{field}", value, "must be an int >= 0 (0: never / all at once)")
    for group, field in (("eval", "every"), ("gradstats", "every")):
        if config[group][field] % config.steps_per_dispatch:
            bad("steps_per_dispatch", config.steps_per_dispatch, f"must divide {group}.{field}={config[group][field]}")
    if config.eval.feature_space not in FEATURE_SPACES:
        bad("eval.feature_space", config.eval.feature_space, f"must be one of {FEATURE_SPACES}")
    for field in ("num_samples", "max_reference", "kid_subsets", "kid_subset_size", "batch_size"):
        if not _positive_int(config.eval[field]):
            bad(f"eval.{field}", config.eval[field], "must be an int >= 1")
    if config.eval.num_samples < 2:
        bad("eval.num_samples", config.eval.num_samples, "must be >= 2 (a covariance needs two samples)")
    if not isinstance(config.eval.infinity, bool):
        bad("eval.infinity", config.eval.infinity, "must be True or False")
    if not (_positive_int(config.eval.fd_bootstrap) or config.eval.fd_bootstrap == 0) or (
            config.eval.fd_bootstrap == 1):
        bad("eval.fd_bootstrap", config.eval.fd_bootstrap, "must be 0 (none) or an int >= 2 (a standard error)")
    validate_loglik(config.loglik, bad)
    if not (_positive_int(config.gradstats.num_draws) and config.gradstats.num_draws >= 2):
        bad("gradstats.num_draws", config.gradstats.num_draws, "must be an int >= 2 (a variance needs two draws)")
    if not _positive_int(config.gradstats.num_batches):
        bad("gradstats.num_batches", config.gradstats.num_batches, "must be an int >= 1")
    return config
