"""The experiment configuration, under the import path config files use: ``from lebm_jax.config import base_config``.

The fields, defaults and validation live in `lebm_jax.training.config`; this module keeps the path that
config files (the shipped ones and any written before the package had layers) import from.
"""

from lebm_jax.training.config import base_config, from_file, from_saved, validate

__all__ = ["base_config", "from_file", "from_saved", "validate"]
