"""Orbax checkpoints of the train state and the config that made it.

A checkpoint is written to a temporary directory and renamed into place when complete, so a process
killed mid-write leaves the previous checkpoints intact; incomplete directories are never listed as
steps. Old checkpoints beyond ``max_to_keep`` are first renamed into ``checkpoints/_deleting/`` (one
atomic rename) and only then removed, so a process killed while deleting never leaves a half-deleted
directory listed as a step. Restoring checks that the checkpoint fits the current config and names the
fields that differ when it does not, and checks the restored state against a SHA-256 of it saved
alongside (orbax's array files carry no checksum: flipped bytes would otherwise restore silently).

Resuming with a changed config (`check_resume`, called by the loop before any work): a change of a
field in SHAPE_FIELDS is refused always; a change of any field outside RESUMABLE_FIELDS is refused
unless the caller allows it explicitly (``--allow_config_change``), so that one workdir never holds
a run trained with two configs without saying so.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from lebm_jax.training import config as config_lib

# Fields that change the shapes of the saved state: a checkpoint written with other values is unusable.
SHAPE_FIELDS = (
    "data.image_size", "data.channels", "model.latent_dim", "model.ngf", "model.generator_widths",
    "model.ebm_hidden", "model.ebm_depth",
)
TRASH = "_deleting"  # subdirectory old checkpoints are moved into before they are removed

# Fields a run may be resumed with changed, silently: each decides only *when* something happens (or
# what is kept on disk), never *what* a training step or a measurement computes, so the state and every
# number logged for a step are the same whichever value ran before or after the resume.
#   num_steps         where the run stops. No schedule depends on it (the learning rates decay per
#                     epoch, `build.learning_rates`); only the evaluations due "at the last step" move.
#   log_every, checkpoint_every, sample_every
#                     which steps log, save, draw a sample grid and the held-out metrics. A logged row is
#                     the step's own (the mean over its dispatch of steps_per_dispatch steps), and the
#                     grid's and evaluators' keys are fold_in(key, step): another cadence logs the same
#                     numbers at other steps.
#   eval.every, gradstats.every
#                     the same for sample quality and the gradient variance: when they run, not what.
#   max_to_keep       how many checkpoints stay on disk.
#   num_samples       images in each sample grid: pictures only, never a metric or the train state.
# Not resumable, because the numbers logged after the resume would mean something else under the same
# names (a curve would join two quantities):
#   steps_per_dispatch  a logged training row is the mean over the k steps of one dispatch, and k
#                       steps run as one program (a scan off CPU) round differently;
#   eval.* but every   they define the estimator: sample count, reference set, feature space, KID
#                       subsets, FID∞, the held-out log p(x), even eval.batch_size (images are drawn per
#                       batch with fold_in(key, batch index), so another size draws other images);
#   gradstats.* but every, num_heldout   the same for the gradient variance and the held-out metrics;
# and everything else (seed, data, model, chains, ladder, optimiser, batch size, variant) changes the
# training itself. Those need ``--allow_config_change``; SHAPE_FIELDS never resume.
RESUMABLE_FIELDS = (
    "num_steps", "log_every", "checkpoint_every", "sample_every", "eval.every", "gradstats.every", "loglik.every",
    "max_to_keep", "num_samples",
)
ALLOW_FLAG = "--allow_config_change"  # the command-line flag of experiments/train.py that allows a change


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def config_differences(saved: dict, current: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
    """{field: (saved value, current value)} for every field that differs. Fields added to the config
    since ``saved`` was written count with their defaults (`config.from_saved`), as a restored run has them."""
    a = _flatten(json.loads(config_lib.from_saved(saved).to_json()))
    b = _flatten(json.loads(current.to_json()))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _difference_lines(diffs: dict[str, tuple[Any, Any]]) -> str:
    """One line per field, "  field: saved a → now b", ending in ";" and the last in "." (reads as one
    sentence too when a command line joins the lines)."""
    lines = [f"  {k}: saved {a!r} → now {b!r}" for k, (a, b) in diffs.items()]
    return ";\n".join(lines) + "."


def check_resume(saved: dict, config: ml_collections.ConfigDict, where: str, allow_changes: bool = False
                 ) -> dict[str, tuple[Any, Any]]:
    """Whether a run saved with config ``saved`` (the checkpoint ``where``) may go on with ``config``;
    returns every difference {field: (saved, now)}, resumable fields included, for the run's record.

    Raises ValueError listing the differences when a shape field differs (always), or when a field
    outside RESUMABLE_FIELDS differs and ``allow_changes`` is False.
    """
    diffs = config_differences(saved, config)
    unusable = {k: v for k, v in diffs.items() if k in SHAPE_FIELDS}
    if unusable:
        raise ValueError(
            f"checkpoint {where} does not fit the config: its arrays have other shapes:\n"
            f"{_difference_lines(unusable)}\n"
            f"A checkpoint cannot be resumed with other shapes, not even with {ALLOW_FLAG}. Use a new "
            "--workdir, or the saved values, to go on."
        )
    changed = {k: v for k, v in diffs.items() if k not in RESUMABLE_FIELDS}
    if changed and not allow_changes:
        raise ValueError(
            f"the config differs from the one checkpoint {where} was trained with, in fields that change "
            f"what the run computes:\n{_difference_lines(changed)}\n"
            "Going on would record one run trained with two configs as one. Use the saved values to resume, "
            f"or a new --workdir for a new run, or pass {ALLOW_FLAG} (allow_config_changes=True) to go on "
            "with the new values from this step (the change and its step are then recorded in "
            f"config_changes.jsonl). Nothing was changed on disk. Fields that may change on resume: "
            f"{', '.join(RESUMABLE_FIELDS)}."
        )
    return diffs


# reprs that say nothing to a reader: <bound method ...>, <... object at 0x...>; TensorStore's spec dump
_REPRS = re.compile(r"\s*<(?:bound method|built-in method|function|method|[\w.]+ object)\b[^>]*>?")
_ADDRESS = re.compile(r"\s+at 0x[0-9a-fA-F]+")
_TENSORSTORE_DETAILS = re.compile(r"\s*See full TensorStore details:.*")
_SLICES = re.compile(r"\s*index:\s*\((?:\s*slice\([^)]*\),?)+\s*\)")
_ARRAY_PATH = re.compile(r"'path': '([^'/][^']*?)/?'")  # an array's path inside the checkpoint (not a file path)


def _brief(e: BaseException, limit: int = 200) -> str:
    """An exception's type and its first line, cleaned to one short line: object reprs and addresses
    and TensorStore's spec dump dropped, the array named when TensorStore says which one failed (its
    messages run to pages; the whole chain is still in the traceback)."""
    text = str(e)
    first = (text.strip().splitlines() or [""])[0]
    for pattern in (_TENSORSTORE_DETAILS, _REPRS, _ADDRESS, _SLICES):
        first = pattern.sub("", first)
    first = " ".join(first.split()).rstrip(" .:;,")
    arrays = _ARRAY_PATH.findall(text)
    if arrays:
        first = f"{first}: {arrays[-1]}" if first else arrays[-1]
    if len(first) > limit:
        first = first[: limit - 3].rstrip() + "..."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _key_name(key) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def state_digest(state: Any) -> str | None:
    """SHA-256 over the leaves (path, dtype, shape, bytes), in order of path; the same for a tree and
    for its restored copy whatever container types hold it. None if a leaf is split over processes."""
    leaves = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if not leaf.is_fully_replicated:
                return None
            leaf = leaf.addressable_data(0)
        leaves["/".join(_key_name(k) for k in path)] = np.asarray(leaf)
    h = hashlib.sha256()
    for name in sorted(leaves):
        value = np.ascontiguousarray(leaves[name])
        h.update(f"{name}:{value.dtype.str}:{value.shape};".encode())
        h.update(value.tobytes())
    return h.hexdigest()


class Checkpointer:
    """Saves and restores {"state": train state, "config": config} under ``workdir/checkpoints``."""

    def __init__(self, workdir: str, max_to_keep: int | None, read_only: bool = False):
        """``read_only``: for readers of a workdir that may be training (touches nothing on disk)."""
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self._read_only = read_only
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=not read_only, enable_async_checkpointing=False,
            cleanup_tmp_directories=not read_only, read_only=read_only,
            todelete_subdir=None if read_only else TRASH,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "config", "digest")
        )
        # orbax removes unfinished directories in a background thread; wait for it, or a run that stops
        # at once (a checkpoint that does not fit) races it at interpreter exit and prints a second error
        getattr(self._manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()
        self._empty_trash()  # left by a process killed while deleting

    def _empty_trash(self) -> None:
        if not self._read_only and jax.process_index() == 0:
            shutil.rmtree(os.path.join(self.directory, TRASH), ignore_errors=True)

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, config: ml_collections.ConfigDict) -> None:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(json.loads(config.to_json())),
            digest=ocp.args.JsonSave({"sha256": state_digest(state)}),
        )
        self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()
        self._empty_trash()

    def read_config(self, step: int) -> dict:
        return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def _unusable(self, step: int, what: str, e: BaseException | None = None) -> RuntimeError:
        """One line: which checkpoint, what is wrong (in brief), and what to do."""
        where = os.path.join(self.directory, str(step))
        earlier = [s for s in self.all_steps() if s < step]
        then = f"to resume from step {earlier[-1]}" if earlier else "to start again from step 0"
        detail = f" ({_brief(e)})" if e is not None else ""
        return RuntimeError(
            f"checkpoint {where} {what}{detail}. It is left untouched; move it out of {self.directory} "
            f"{then} (steps present: {self.all_steps()})."
        )

    def saved_config(self, step: int) -> dict:
        """The config saved with the checkpoint at ``step``; RuntimeError (one line) if it cannot be read."""
        try:
            return self.read_config(step)
        except Exception as e:  # noqa: BLE001 - any failure to read means an unusable checkpoint
            raise self._unusable(step, "cannot be read", e) from e

    def restore(self, step: int, abstract_state: Any, config: ml_collections.ConfigDict) -> Any:
        """The state saved at ``step``, laid out like ``abstract_state``; clear errors when it cannot be used
        (ValueError when its shapes do not fit ``config``, RuntimeError when it cannot be read or is corrupt).
        Other differences from the saved config are the caller's to judge (`check_resume`)."""
        where = os.path.join(self.directory, str(step))
        saved = self.saved_config(step)
        unusable = {k: v for k, v in config_differences(saved, config).items() if k in SHAPE_FIELDS}
        if unusable:
            raise ValueError(
                f"checkpoint {where} does not fit the config: its arrays have other shapes:\n"
                f"{_difference_lines(unusable)}\nUse a new --workdir, or the saved values, to go on."
            )
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        except Exception as e:  # noqa: BLE001
            raise self._unusable(step, "cannot be restored", e) from e
        if os.path.isdir(os.path.join(where, "digest")):  # checkpoints written before it have none
            try:
                saved_digest = self._manager.restore(
                    step, args=ocp.args.Composite(digest=ocp.args.JsonRestore())
                )["digest"]["sha256"]
            except Exception as e:  # noqa: BLE001
                raise self._unusable(step, "has a checksum that cannot be read", e) from e
            digest = state_digest(restored["state"])
            if saved_digest is not None and digest is not None and digest != saved_digest:
                raise self._unusable(step, "is corrupt: the restored state does not match the SHA-256 saved with it")
        return restored["state"]

    def close(self) -> None:
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding structs of ``tree`` for restoring into the same layout."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def latest_saved_config(workdir: str) -> tuple[int, str, dict] | None:
    """(latest step, its directory, the config saved with it) of ``workdir``'s checkpoints, read without
    touching anything on disk; None when there is none. RuntimeError (one line) if that config cannot be read."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return None
    ckpt = Checkpointer(workdir, max_to_keep=None, read_only=True)
    try:
        step = ckpt.latest_step()
        if step is None:
            return None
        return step, os.path.join(ckpt.directory, str(step)), ckpt.saved_config(step)
    finally:
        ckpt.close()
