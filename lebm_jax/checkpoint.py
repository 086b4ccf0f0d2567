"""Orbax checkpoints of the train state and the config that made it.

A checkpoint is written to a temporary directory and renamed into place when complete, so a process
killed mid-write leaves the previous checkpoints intact; incomplete directories are never listed as
steps. Restoring checks that the checkpoint fits the current config and names the fields that differ
when it does not.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

# Fields that change the shapes of the saved state: a checkpoint written with other values is unusable.
SHAPE_FIELDS = (
    "data.image_size", "data.channels", "model.latent_dim", "model.ngf", "model.generator_widths",
    "model.ebm_hidden", "model.ebm_depth",
)


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


class Checkpointer:
    """Saves and restores {"state": train state, "config": config} under ``workdir/checkpoints``."""

    def __init__(self, workdir: str, max_to_keep: int):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "config"))

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, config: ml_collections.ConfigDict) -> None:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(json.loads(config.to_json()))
        )
        self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()

    def read_config(self, step: int) -> dict:
        return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def restore(self, step: int, abstract_state: Any, config: ml_collections.ConfigDict) -> Any:
        """The state saved at ``step``, laid out like ``abstract_state``; clear errors when it cannot be used."""
        where = os.path.join(self.directory, str(step))
        try:
            saved = self.read_config(step)
        except Exception as e:  # noqa: BLE001 - any failure to read means an unusable checkpoint
            raise RuntimeError(
                f"checkpoint {where} cannot be read ({type(e).__name__}: {e}). It is left untouched; move it "
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
                f"checkpoint {where} cannot be restored ({type(e).__name__}: {e}). It is left untouched; move it "
                f"away to resume from an earlier one (steps present: {self.all_steps()})."
            ) from e
        return restored["state"]

    def close(self) -> None:
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """Shape/dtype/sharding structs of ``tree`` for restoring into the same layout."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
