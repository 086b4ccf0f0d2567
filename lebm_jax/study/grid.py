"""The grid of a variance study: which training runs it holds and each run's training config.

The grid is ``vanilla`` at the base batch size and at each of ``batch_sizes`` (the study's other way to
change gradient variance), and ``ti`` for each schedule power p in ``powers`` (N = ``num_temps`` rungs,
t_i = (i/(N−1))^p), each times ``seeds``. Runs differ from ``study.train`` (a full training config) only
in those fields.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from lebm_jax.study.layout import number
from lebm_jax.training import config as config_lib

FULL_SCALE_POWERS = (0.1, 0.3, 1.0, 2.0, 3.0, 6.0, 10.0)
FULL_SCALE_SEEDS = (0, 1, 2, 3, 4)
FULL_SCALE_BATCH_SIZES = (25, 50, 200)  # vanilla, besides the training config's own batch size


def full_scale(name: str, train_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The study's own settings around a full training config: N = 10 rungs, p ∈ FULL_SCALE_POWERS,
    five seeds, vanilla also at FULL_SCALE_BATCH_SIZES; Inception FID every 5,000 steps; the held-out
    log-likelihood protocol (its default settings, the same for every run) every 10,000 steps."""
    c = ml_collections.ConfigDict()
    c.name = name
    train_config.eval.feature_space = "inception"
    train_config.loglik.every = 10_000
    c.train = train_config
    c.vanilla = True
    c.batch_sizes = FULL_SCALE_BATCH_SIZES
    c.powers = FULL_SCALE_POWERS
    c.num_temps = 10
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
    power: float | None = None  # ti only
    num_temps: int | None = None  # ti only

    def overrides(self) -> dict:
        out = {"variant": self.variant, "seed": self.seed, "batch_size": self.batch_size}
        if self.variant == "ti":
            out.update({"ti.power": self.power, "ti.num_temps": self.num_temps})
        return out


def study_grid(study: ml_collections.ConfigDict) -> list[RunSpec]:
    """The runs of a study config, seeds innermost (a group's seeds run one after another)."""
    base_batch = int(study.train.batch_size)
    cells: list[tuple[str, str, dict]] = []
    if study.vanilla:
        for b in (base_batch, *[int(v) for v in study.batch_sizes if int(v) != base_batch]):
            label = "vanilla" if b == base_batch else f"vanilla B={b}"
            cells.append((f"vanilla_b{b}", label, {"variant": "vanilla", "batch_size": b}))
    for p in study.powers:
        p = float(p)
        cells.append((f"ti_p{number(p)}_b{base_batch}", f"ti p={number(p)}",
                      {"variant": "ti", "batch_size": base_batch, "power": p, "num_temps": int(study.num_temps)}))
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


def validate(study: ml_collections.ConfigDict) -> list[RunSpec]:
    """Checks the study config and every run's training config before any work; returns the grid."""
    for field in ("powers", "seeds", "batch_sizes"):
        if isinstance(study[field], (str, bytes)) or not hasattr(study[field], "__iter__"):
            raise ValueError(f"study.{field}={study[field]!r} must be a list")
    if len(set(study.seeds)) != len(study.seeds):
        raise ValueError(f"study.seeds={tuple(study.seeds)!r} repeats a seed")
    grid = study_grid(study)
    for spec in grid:
        try:
            run_config(study, spec)
        except ValueError as e:
            raise ValueError(f"run {spec.name}: {e}") from None
    return grid
