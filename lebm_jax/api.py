"""The public way to use a trained run from Python: ``from lebm_jax.api import Trained``.

`Trained` lives in `lebm_jax.training.trained`; this module keeps the short, documented import path.
"""

from lebm_jax.training.trained import Trained

__all__ = ["Trained"]
