"""The grid of a variance study: which training runs it holds and each run's training config.

The grid is ``vanilla`` at the base batch size and at each of ``batch_sizes`` (the study's other way to
change gradient variance); ``ti`` for each schedule power p in ``powers`` (N = ``num_temps`` rungs,
t_i = (i/(N−1))^p, fixed); ``ti`` with replica exchange between neighbouring rungs every ``exchange_every``
posterior Langevin steps for each p in ``exchange_powers``; and ``ti`` with the adaptive ladder (re-placed
every ``adapt_every`` training steps, moving average of rate ``adapt_decay``; design.md §3) started from
the power ladder of each p in ``adaptive_powers``; each times ``seeds``. Runs differ from ``study.train``
(a full training config) only in those fields. A study config without the exchange and adaptive fields
(written before they existed) gives the grid it always gave.

"""

from __future__ import annotations

import dataclasses

import ml_collections

from lebm_jax.study.layout import ti_group, ti_stem
from lebm_jax.training import config as config_lib

FULL_SCALE_POWERS = (0.1, 0.3, 1.0, 2.0, 3.0, 6.0, 10.0)
FULL_SCALE_SEEDS = (0, 1, 2, 3, 4)
FULL_SCALE_BATCH_SIZES = (25, 50, 200)  # vanilla, besides the training config's own batch size
FULL_SCALE_EXCHANGE_POWERS = (1.0,)  # ti with replica exchange, from these powers
FULL_SCALE_ADAPTIVE_POWERS = (1.0,)  # ti with the adaptive ladder, started from these powers
# The fields a study config may lack (it was written before they existed), with the value that means "none".
OPTIONAL_FIELDS = {"exchange_powers": (), "exchange_every": 0, "adaptive_powers": (), "adapt_every": 0,
                   "adapt_decay": 0.9}


def full_scale(name: str, train_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The study's own settings around a full training config: N = 10 rungs, p ∈ FULL_SCALE_POWERS, ti with
    replica exchange every 5 posterior steps and ti with the adaptive ladder, both from p = 1; five seeds,
    vanilla also at FULL_SCALE_BATCH_SIZES; Inception FID every 5,000 steps; the held-out log-likelihood
    protocol (its default settings, the same for every run) every 10,000 steps."""
    c = ml_collections.ConfigDict()
    c.name = name
    train_config.eval.feature_space = "inception"
    train_config.loglik.every = 10_000
    c.train = train_config
    c.vanilla = True
    c.batch_sizes = FULL_SCALE_BATCH_SIZES
    c.powers = FULL_SCALE_POWERS
    c.num_temps = 10
    # Replica exchange every 5 of the posterior chain's 20 steps: 4 rounds, alternating even and odd pairs,
    # so every neighbouring pair is proposed twice per chain.
    c.exchange_powers = FULL_SCALE_EXCHANGE_POWERS
    c.exchange_every = 5
    # The adaptive ladder re-placed every 100 steps from a moving average of rate 0.99 (about the last 100
    # steps' rung statistics, 10,000 examples at batch 100): some 500 placements over a run of ~50,000 steps,
    # each from statistics far less noisy than one batch's.
    c.adaptive_powers = FULL_SCALE_ADAPTIVE_POWERS
    c.adapt_every = 100
    c.adapt_decay = 0.99
    c.seeds = FULL_SCALE_SEEDS
    c.compile_cache = True
    return c


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One cell of the grid."""

    name: str  # directory name under runs/
    group: str  # the curve it belongs to (seeds of one group are averaged)
    variant: str
    seed: int
    batch_size: int
    power: float | None = None  # ti only (the adaptive ladder's starting power)
    num_temps: int | None = None  # ti only
    exchange_every: int | None = None  # ti only: posterior steps between replica-exchange rounds; 0 = none
    adapt_every: int | None = None  # ti only: training steps between ladder placements; 0 = fixed ladder
    adapt_decay: float | None = None  # ti with adapt_every > 0 only

    def overrides(self) -> dict:
        out = {"variant": self.variant, "seed": self.seed, "batch_size": self.batch_size}
        if self.variant == "ti":
            out.update({"ti.power": self.power, "ti.num_temps": self.num_temps})
            if self.exchange_every is not None:
                out["ti.exchange_every"] = self.exchange_every
            if self.adapt_every is not None:
                out["ti.adapt_every"] = self.adapt_every
            if self.adapt_every and self.adapt_decay is not None:
                out["ti.adapt_decay"] = self.adapt_decay
        return out


def _field(study: ml_collections.ConfigDict, name: str):
    """``study.<name>``, or for a field of OPTIONAL_FIELDS absent from an older config its "none" value."""
    return study[name] if name in study else OPTIONAL_FIELDS[name]


def study_grid(study: ml_collections.ConfigDict) -> list[RunSpec]:
    """The runs of a study config, seeds innermost (a group's seeds run one after another): vanilla, then
    ti with fixed ladders, with replica exchange and with the adaptive ladder, each by power."""
    base_batch = int(study.train.batch_size)
    num_temps = int(study.num_temps)
    cells: list[tuple[str, str, dict]] = []
    if study.vanilla:
        for b in (base_batch, *[int(v) for v in study.batch_sizes if int(v) != base_batch]):
            label = "vanilla" if b == base_batch else f"vanilla B={b}"
            cells.append((f"vanilla_b{b}", label, {"variant": "vanilla", "batch_size": b}))

    def ti(power, exchange_every: int = 0, adapt_every: int = 0, adapt_decay: float | None = None):
        power = float(power)
        fields = {"variant": "ti", "batch_size": base_batch, "power": power, "num_temps": num_temps}
        if exchange_every or adapt_every:  # the fixed-ladder runs keep the overrides they always had
            fields.update(exchange_every=exchange_every, adapt_every=adapt_every,
                          adapt_decay=adapt_decay if adapt_every else None)
        cells.append((ti_stem(power, base_batch, exchange_every, adapt_every),
                      ti_group(power, exchange_every, adapt_every), fields))

    for p in study.powers:
        ti(p)
    for p in _field(study, "exchange_powers"):
        ti(p, exchange_every=_field(study, "exchange_every"))
    for p in _field(study, "adaptive_powers"):
        ti(p, adapt_every=_field(study, "adapt_every"), adapt_decay=_field(study, "adapt_decay"))
    runs = []
    for stem, group, fields in cells:
        for seed in study.seeds:
            runs.append(RunSpec(name=f"{stem}_s{int(seed)}", group=group, seed=int(seed), **fields))
    if not runs:
        raise ValueError("the study grid is empty: set vanilla=True or give at least one power")
    return runs


def run_config(study: ml_collections.ConfigDict, spec: RunSpec) -> ml_collections.ConfigDict:
    """The training config of one run: ``study.train`` with the run's fields, validated."""
    config = ml_collections.ConfigDict(study.train.to_dict())
    config.update_from_flattened_dict(spec.overrides())
    return config_lib.validate(config)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate(study: ml_collections.ConfigDict) -> list[RunSpec]:
    """Checks the study config and every run's training config before any work; returns the grid.

    Raises ValueError naming the study field (``study.<field>=...``), or the run and its training field
    (``run <name>: config.<field>=...``)."""
    for field in ("powers", "seeds", "batch_sizes", "exchange_powers", "adaptive_powers"):
        value = _field(study, field)
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ValueError(f"study.{field}={value!r} must be a list")
    if len(set(study.seeds)) != len(study.seeds):
        raise ValueError(f"study.seeds={tuple(study.seeds)!r} repeats a seed")
    for field in ("powers", "exchange_powers", "adaptive_powers"):
        value = tuple(_field(study, field))
        if len({float(p) for p in value if isinstance(p, (int, float))}) != len(value):
            raise ValueError(f"study.{field}={value!r} repeats a power (or holds a non-number)")
    for powers, field in (("exchange_powers", "exchange_every"), ("adaptive_powers", "adapt_every")):
        value = _field(study, field)
        if tuple(_field(study, powers)) and not (_is_int(value) and value >= 1):
            raise ValueError(f"study.{field}={value!r}: must be an int >= 1 when study.{powers} is set "
                             f"(study.{powers}={tuple(_field(study, powers))!r})")
    grid = study_grid(study)
    for spec in grid:
        try:
            run_config(study, spec)
        except ValueError as e:
            raise ValueError(f"run {spec.name}: {e}") from None
    return grid
