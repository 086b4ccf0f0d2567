"""Orbax checkpoints of the train state and the config that made it.

A checkpoint is written to a temporary directory and renamed into place when complete, so a process
killed mid-write leaves the previous checkpoints intact; incomplete directories are never listed as
steps. Old checkpoints beyond ``max_to_keep`` are first renamed into ``checkpoints/_deleting/`` (one
atomic rename) and only then removed, so a process killed while deleting never leaves a half-deleted
directory listed as a step. Restoring checks that the checkpoint fits the current config and names the
fields that differ when it does not, and checks the restored state against a SHA-256 of it saved
alongside (orbax's array files carry no checksum: flipped bytes would otherwise restore silently).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

# Fields that change the shapes of the saved state: a checkpoint written with other values is unusable.
SHAPE_FIELDS = (
    "data.image_size", "data.channels", "model.latent_dim", "model.ngf", "model.generator_widths",
    "model.ebm_hidden", "model.ebm_depth",
)
TRASH = "_deleting"  # subdirectory old checkpoints are moved into before they are removed


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def config_differences(saved: dict, current: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
    """{field: (saved value, current value)} for every field that differs."""
    a = _flatten(saved)
    b = _flatten(json.loads(current.to_json()))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _brief(e: Exception) -> str:
    """An exception's type and first line, at most 300 characters (TensorStore's messages run to pages;
    the whole chain is still in the traceback)."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:300]}{'...' if len(first) > 300 else ''}"


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

    def restore(self, step: int, abstract_state: Any, config: ml_collections.ConfigDict) -> Any:
        """The state saved at ``step``, laid out like ``abstract_state``; clear errors when it cannot be used."""
        where = os.path.join(self.directory, str(step))
        try:
            saved = self.read_config(step)
        except Exception as e:  # noqa: BLE001 - any failure to read means an unusable checkpoint
            raise RuntimeError(
                f"checkpoint {where} cannot be read ({_brief(e)}). It is left untouched; move it "
                f"away to resume from an earlier one (steps present: {self.all_steps()})."
            ) from e
        diffs = config_differences(saved, config)
        unusable = {k: v for k, v in diffs.items() if k in SHAPE_FIELDS}
        if unusable:
            lines = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in unusable.items())
            raise ValueError(
                f"checkpoint {where} does not fit the config ({lines}). Use a new --workdir, or the "
                "saved values, to go on."
            )
        changed = {k: v for k, v in diffs.items() if k != "num_steps"}
        if changed:
            logging.warning(
                "resuming %s with a changed config: %s", where,
                ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()),
            )
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        except Exception as e:  # noqa: BLE001
            raise RuntimeError(
                f"checkpoint {where} cannot be restored ({_brief(e)}). It is left untouched; move it "
                f"away to resume from an earlier one (steps present: {self.all_steps()})."
            ) from e
        if os.path.isdir(os.path.join(where, "digest")):  # checkpoints written before it have none
            try:
                saved_digest = self._manager.restore(
                    step, args=ocp.args.Composite(digest=ocp.args.JsonRestore())
                )["digest"]["sha256"]
            except Exception as e:  # noqa: BLE001
                raise RuntimeError(
                    f"checkpoint {where}: its checksum cannot be read ({_brief(e)}). It is left "
                    f"untouched; move it away to resume from an earlier one (steps present: {self.all_steps()})."
                ) from e
            digest = state_digest(restored["state"])
            if saved_digest is not None and digest is not None and digest != saved_digest:
                raise RuntimeError(
                    f"checkpoint {where} is corrupt: the restored state does not match the SHA-256 saved with "
                    f"it. It is left untouched; move it away to resume from an earlier one (steps present: "
                    f"{self.all_steps()})."
                )
        return restored["state"]

    def close(self) -> None:
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding structs of ``tree`` for restoring into the same layout."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
