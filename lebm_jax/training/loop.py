"""The training loop: `train_and_evaluate` trains a config in a workdir, resuming where it stopped.

One pass of the loop: k global batches (`step.global_batches`) → one compiled call of k data-parallel
steps (`step.make_train_fn`) → logged metrics, checkpoints, sample grids and whichever evaluators are
due (`lebm_jax.measure.registry`). The loop never names a metric: evaluators come from the config.

The workdir's record of the config: ``config.json`` is the config the run started with (written at
step 0 only), and ``config_changes.jsonl`` holds one line per resume with a changed config,
``{"step": n, "changes": {field: [saved, now]}, "time": ...}``, so the config in force at any step is
config.json with the lines of earlier steps applied. Fields outside `checkpoint.RESUMABLE_FIELDS`
change only with ``allow_config_changes=True``; the check runs before any work or write.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import jax
import ml_collections
from clu import parameter_overview, periodic_actions
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lebm_jax.core import sampling
from lebm_jax.core.devices import data_mesh, host_value
from lebm_jax.data import datasets as data_lib
from lebm_jax.data import images
from lebm_jax.data.files import write_atomic
from lebm_jax.measure.base import Context, is_due, measure, seconds_metric
from lebm_jax.measure.registry import build_evaluators
from lebm_jax.training import build, checkpoint
from lebm_jax.training import config as config_lib
from lebm_jax.training.checkpoint import Checkpointer, abstract_like
from lebm_jax.training.step import TrainState, create_train_state, global_batches, make_train_fn
from lebm_jax.training.writers import create_writer, quiet_library_logs, read_jsonl

CONFIG_FILE = "config.json"  # the config the run started with
CHANGES_FILE = "config_changes.jsonl"  # one line per resume with a changed config


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or parameter."""


@dataclasses.dataclass
class RunResult:
    state: TrainState
    history: list  # logged metric dicts
    workdir: str


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _record_config(workdir: str, step: int, config: ml_collections.ConfigDict, saved: dict | None,
                   changes: dict) -> None:
    """Keeps the workdir's config record true (lead process only).

    A run from step 0: config.json is ``config`` and config_changes.jsonl goes. A resume from ``step``:
    config.json is kept (written from the checkpoint's config ``saved`` if it is missing); lines of
    config_changes.jsonl at or after ``step`` (left by an attempt that saved nothing after it) go, and
    ``changes`` ({field: (saved, now)}, if any) are added as the line of ``step``.
    """
    config_path, changes_path = os.path.join(workdir, CONFIG_FILE), os.path.join(workdir, CHANGES_FILE)
    if step == 0:
        write_atomic(config_path, config.to_json(indent=2).encode())
        if os.path.exists(changes_path):
            os.remove(changes_path)
        return
    if not os.path.exists(config_path) and saved is not None:
        write_atomic(config_path, config_lib.from_saved(saved).to_json(indent=2).encode())
    old = read_jsonl(changes_path) if os.path.exists(changes_path) else []
    kept = [row for row in old if row["step"] < step]
    if changes:
        row = {"step": step, "changes": {k: [a, b] for k, (a, b) in changes.items()},
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        kept.append(row)
        logging.info("resumed at step %d with config changes (recorded in %s): %s", step, changes_path,
                     ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()))
    if kept != old:
        write_atomic(changes_path, "".join(json.dumps(row) + "\n" for row in kept).encode())


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, dataset: data_lib.ImageData | None = None, *,
    allow_config_changes: bool = False, evaluation_cache: str | None = None,
) -> RunResult:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint if there is one.

    ``dataset`` overrides loading ``config.data`` (tests and custom data). Writes
    checkpoints/, metrics.jsonl, TensorBoard events, samples/*.png, config.json (the config of step 0)
    and config_changes.jsonl (changes made on resume) to ``workdir``.
    Resuming with a config that differs from the latest checkpoint's in a field outside
    `checkpoint.RESUMABLE_FIELDS` raises ValueError listing the differences, before any work or write,
    unless ``allow_config_changes`` (``--allow_config_change``): then the run goes on with ``config`` and
    the change is recorded. A shape field (`checkpoint.SHAPE_FIELDS`) never changes.
    ``evaluation_cache``: a directory where evaluators keep results that depend only on their inputs
    (`measure.base.Context.cache_dir`; the runs of a study share one), outside the run's config: it
    changes how long an evaluation takes, never what it logs.
    Raises NonFiniteError (after keeping the last good checkpoint untouched) if a step's loss or
    update is not finite; nothing is logged for that step or after it.
    """
    config_lib.validate(config)
    workdir = os.path.abspath(workdir)
    lead = jax.process_index() == 0
    resumed = checkpoint.latest_saved_config(workdir)  # read-only: a refused resume changes nothing
    saved, changes = None, {}
    if resumed is not None:
        _, where, saved = resumed
        changes = checkpoint.check_resume(saved, config, where, allow_config_changes)
    data = dataset if dataset is not None else data_lib.load(config.data)  # before the workdir: bad data leaves none
    os.makedirs(workdir, exist_ok=True)
    spe = data_lib.steps_per_epoch(data.train.shape[0], config.batch_size)
    if config.batch_size % jax.device_count():
        raise ValueError(f"config.batch_size={config.batch_size} must be divisible by the {jax.device_count()} devices")

    model = build.build_model(config)
    objective = build.build_objective(config, model)
    optimizers = build.make_optimizers(config, spe)
    lrs = build.learning_rates(config, spe)
    mesh = data_mesh()
    keys = build.run_keys(config.seed)
    state = create_train_state(model, optimizers, keys.init, build.initial_ladder(config))

    ckpt = Checkpointer(workdir, config.max_to_keep)
    start = ckpt.latest_step()
    if start is not None:
        try:
            if resumed is None or resumed[0] != start:  # not the checkpoint checked above: check this one
                saved = ckpt.saved_config(start)
                changes = checkpoint.check_resume(saved, config, os.path.join(ckpt.directory, str(start)),
                                                  allow_config_changes)
            state = ckpt.restore(start, abstract_like(state), config)
            if int(state.nonfinite_step):
                raise NonFiniteError(f"the checkpoint at step {start} holds a non-finite state")
        except BaseException:
            ckpt.close()
            raise
        logging.info("resumed from %s at step %d", ckpt.directory, start)
    state = jax.device_put(state, NamedSharding(mesh, P()))
    step = int(host_value(state.step))

    quiet_library_logs()
    writer = create_writer(workdir, lead, step)
    history: list[dict] = []
    evaluators = build_evaluators(config, Context(model, objective, data, mesh, evaluation_cache))
    hparams = {}
    for evaluator in evaluators:
        logging.info("evaluator %s every %d steps: %s", evaluator.name, evaluator.every, evaluator.info)
        hparams.update({evaluator.prefix + k: float(v) for k, v in evaluator.info.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    if lead and hparams:
        writer.write_hparams(hparams)
    grid_fn = sampling.jit_generate(model, objective.prior_chain)
    seconds = {ev.name: 0.0 for ev in evaluators}  # time spent in each evaluator this session
    seconds["grid"] = 0.0

    def log(at: int, metrics: dict) -> None:
        writer.write_scalars(at, metrics)
        history.append({"step": at, **metrics})

    def sample_grid(at: int, params) -> None:
        t = time.time()
        grid = host_value(grid_fn(params, jax.random.fold_in(keys.samples, at), config.num_samples))  # all processes
        if lead:
            path = os.path.join(workdir, "samples", f"samples_{at:07d}.png")
            images.save_grid(grid, path, scale=max(1, 128 // config.data.image_size))
        seconds["grid"] += time.time() - t

    def evaluate(at: int, params, ladder=None) -> None:
        """The evaluators due at step ``at``, logged as one row; never on parameters the non-finite
        guard kept (the caller checks first). ``ladder``: an adaptive run's current `ladder.AdaptiveLadder`,
        whose temperatures the evaluators that run the objective use."""
        temperatures = None if ladder is None else ladder.temperatures
        out = {}
        for evaluator in evaluators:
            if not is_due(evaluator, at, config.num_steps):
                continue
            t = time.time()
            values = measure(evaluator, params, build.evaluator_key(keys, evaluator.name, at), temperatures)
            out.update({evaluator.prefix + k: v for k, v in values.items()})
            seconds[evaluator.name] += time.time() - t
            out[seconds_metric(evaluator)] = seconds[evaluator.name]
        if out:
            log(at, out)

    if lead:
        _record_config(workdir, step, config, saved, changes)
    if step == 0:
        if lead:
            logging.info("parameters:\n%s", parameter_overview.get_parameter_overview(state.params))
        sample_grid(0, state.params)
        evaluate(0, state.params, getattr(state, "ladder", None))

    train_fn = make_train_fn(objective, optimizers, mesh)
    # clu's progress report (steps/s, % done and ETA in the log and the work-unit notes) every minute;
    # the console line below and the logged steps_per_sec leave evaluator time out, it does not.
    report_progress = periodic_actions.ReportProgress(num_train_steps=config.num_steps, every_secs=60.0)
    k = config.steps_per_dispatch
    t_start, s_start, last_good = time.time(), step, start
    e_start = sum(seconds.values())
    t_log, s_log, e_log = t_start, step, e_start

    def check_finite(st) -> None:
        bad = int(host_value(st.nonfinite_step))
        if bad:
            raise NonFiniteError(
                f"non-finite loss or update at step {bad - 1}; training stopped. The last good checkpoint "
                f"(step {last_good}) in {ckpt.directory} is kept unchanged."
            )

    try:
        while step < config.num_steps:
            n = min(k, config.num_steps - step)
            xs = global_batches(data.train, config, step, n, mesh)
            state, metrics = train_fn(state, xs, keys.steps)
            step += n
            if lead:
                report_progress(step, time.time())
            if step % config.log_every == 0 or step == config.num_steps:
                metrics = {name: float(v) for name, v in host_value(metrics).items()}
                check_finite(state)
                now = time.time()
                evaluating = sum(seconds.values())  # evaluator time is not training time
                metrics["steps_per_sec"] = (step - s_log) / max(now - t_log - (evaluating - e_log), 1e-9)
                metrics["time/train_seconds"] = now - t_start - (evaluating - e_start)  # this session, compile included
                metrics["lr_ebm"], metrics["lr_gen"] = float(lrs["ebm"](step - 1)), float(lrs["gen"](step - 1))
                t_log, s_log, e_log = now, step, evaluating
                log(step, metrics)
                if lead:
                    rate = (step - s_start) / max(now - t_start, 1e-9)
                    print(
                        f"step {step}/{config.num_steps}  loss_ebm {metrics['loss_ebm']:+.4f}  "
                        f"loss_gen {metrics['loss_gen']:.2f}  {metrics['steps_per_sec']:.2f} steps/s  "
                        f"ETA {_format_eta((config.num_steps - step) / max(rate, 1e-9))}",
                        flush=True,
                    )
            if step % config.checkpoint_every == 0 or step == config.num_steps:
                check_finite(state)
                ckpt.save(step, state, config)
                last_good = step
            if step % config.sample_every == 0 or step == config.num_steps:
                check_finite(state)
                sample_grid(step, state.params)
            if any(is_due(ev, step, config.num_steps) for ev in evaluators):
                check_finite(state)
                evaluate(step, state.params, getattr(state, "ladder", None))
    finally:
        writer.flush()
        ckpt.close()
    return RunResult(state=state, history=history, workdir=workdir)
