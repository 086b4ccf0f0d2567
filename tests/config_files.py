"""Loading the files in configs/ as the command line does (locked: unknown keys are errors)."""

from pathlib import Path

from lebm_jax.training.config import from_file

REPO = Path(__file__).resolve().parents[1]


def load_config(name: str):
    """``configs/<name>.py``'s get_config(), locked like the CLI's."""
    config = from_file(REPO / "configs" / f"{name}.py")
    config.lock()
    return config
