"""``python -m experiments.train`` with a hook that stops the process inside a checkpoint save, for
tests/test_kill_during_save.py: the test SIGKILLs it there. The test runs it as a plain script or
forked from tests/harness.py's server; either way it installs the hook and then runs the entry
point's module as ``__main__``.

    python tests/kill_save_script.py --config ... --workdir ... [--config.<key>=<value> ...]

with, in the environment:

- ``LEBM_KILL_HOOK``: where to stop (below);
- ``LEBM_KILL_STEP``: the step whose save stops;
- ``LEBM_KILL_MARKER``: a file the hook writes (atomically, as JSON: the hook, the step and the files
  under checkpoints/ at that moment) once it is in place, before it sleeps until killed.

Hooks (each wraps one call and changes nothing else, so the steps and their numbers are those of the
plain entry point):

- ``items``: orbax's CompositeCheckpointHandler writes the "state" item (every array) of the step's
  checkpoint into its temporary directory, then stops: "config" and "digest" are never written and
  the directory is never renamed into place.
- ``commit``: every item is written and the hook stops in CompositeCheckpointHandler.finalize, just
  before the items and then the step directory are renamed into place.
- ``delete``: the step's checkpoint is complete and orbax has moved the oldest one beyond max_to_keep
  into checkpoints/_deleting/; Checkpointer's removal of that folder deletes half of its files (in
  order of path) and stops.
- ``hold``: Checkpointer.save of the step stops before anything is written (the random-kill test uses
  it on the last step, so a process it means to kill can never finish first).
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
from pathlib import Path

HOOKS = ("items", "commit", "delete", "hold")


def _signal(hook: str, step: int, marker: str, checkpoints: str) -> None:
    """Writes the marker, then sleeps until the test kills the process."""
    root = Path(checkpoints)
    files = sorted(str(p.relative_to(root)) + ("/" if p.is_dir() else "") for p in root.rglob("*"))
    tmp = marker + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"hook": hook, "step": step, "pid": os.getpid(), "files": files}, f)
    os.replace(tmp, marker)
    while True:  # never returns: SIGKILL is the only way out
        time.sleep(3600)


def _step_of(directory) -> int | None:
    """The step of a step directory or of its temporary directory ('12' or '12.orbax-checkpoint-tmp-…')."""
    head = Path(str(directory)).name.split(".")[0]
    return int(head) if head.isdigit() else None


def install(hook: str, step: int, marker: str) -> None:
    import orbax.checkpoint as ocp

    from lebm_jax.training import checkpoint as checkpoint_lib

    composite = ocp.CompositeCheckpointHandler
    checkpointer = checkpoint_lib.Checkpointer
    saving = {"step": None}  # the step Checkpointer.save is saving, None outside it
    original_save = checkpointer.save

    def save(self, at, state, config):
        if hook == "hold" and at == step:
            _signal(hook, at, marker, self.directory)
        saving["step"] = at
        try:
            return original_save(self, at, state, config)
        finally:
            saving["step"] = None

    checkpointer.save = save

    if hook == "items":
        original_items = composite.save

        def composite_save(self, directory, *args, **kwargs):
            if _step_of(directory) == step and saving["step"] == step:
                full = kwargs.pop("args")
                assert not args, args
                original_items(self, directory, args=ocp.args.Composite(state=full["state"]), **kwargs)
                _signal(hook, step, marker, str(Path(str(directory)).parent))
            return original_items(self, directory, *args, **kwargs)

        composite.save = composite_save
    elif hook == "commit":
        original_finalize = composite.finalize

        def finalize(self, directory):
            if _step_of(directory) == step and saving["step"] == step:
                _signal(hook, step, marker, str(Path(str(directory)).parent))
            return original_finalize(self, directory)

        composite.finalize = finalize
    elif hook == "delete":
        original_empty = checkpointer._empty_trash

        def empty_trash(self):
            trash = Path(self.directory) / checkpoint_lib.TRASH
            if saving["step"] == step and trash.is_dir():
                files = sorted(p for p in trash.rglob("*") if p.is_file())
                assert files, f"nothing in {trash} to delete at step {step}"
                for path in files[: len(files) // 2]:
                    path.unlink()
                _signal(hook, step, marker, self.directory)
            return original_empty(self)

        checkpointer._empty_trash = empty_trash


def main() -> None:
    hook = os.environ["LEBM_KILL_HOOK"]
    if hook not in HOOKS:
        raise SystemExit(f"LEBM_KILL_HOOK={hook!r}: expected one of {HOOKS}")
    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo))
    install(hook, int(os.environ["LEBM_KILL_STEP"]), os.environ["LEBM_KILL_MARKER"])
    # then exactly what ``python -m experiments.train`` runs (its _cli.run, its exit statuses)
    runpy.run_module("experiments.train", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
