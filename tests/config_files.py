"""Loading the files in configs/ as the command line does (locked: unknown keys are errors)."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_config(name: str):
    """``configs/<name>.py``'s get_config(), locked like the CLI's."""
    spec = importlib.util.spec_from_file_location(f"_config_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.lock()
    return config
