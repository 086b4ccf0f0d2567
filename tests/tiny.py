"""The tiny training config the tests share: a config file's data with small networks and short chains,
so that a run costs mostly its compilations.

``MODEL`` shrinks the model, the chains, the ladder, the batch and the sample grids; ``TINY`` adds a
one-step run that logs, saves and samples at every step with evaluation, gradient statistics and the
held-out log p(x) off. Both are flattened dicts (dotted keys), ready for ``update_from_flattened_dict``
or for ``--config.<key>=<value>`` flags; ``tiny_config`` applies one to a config file.
"""

import ml_collections

from config_files import load_config

MODEL = {
    "model.latent_dim": 4,
    "model.ngf": 4,
    "model.generator_widths": (),  # widths from ngf
    "model.ebm_hidden": 8,
    "prior_chain.num_steps": 3,
    "posterior_chain.num_steps": 3,
    "ti.num_temps": 3,
    "batch_size": 8,
    "num_samples": 4,
}

TINY = {
    **MODEL,
    "num_heldout": 16,
    "num_steps": 1,
    "log_every": 1,
    "checkpoint_every": 1,
    "sample_every": 1,
    "eval.every": 0,
    "gradstats.every": 0,
}


def tiny_config(name: str = "digits", base: dict = TINY, **overrides) -> ml_collections.ConfigDict:
    """``configs/<name>.py``, locked like the CLI's, with ``base`` and then ``overrides`` (dotted keys,
    e.g. ``tiny_config(variant="ti", **{"ti.power": 3.0})``) applied; not validated."""
    config = load_config(name)
    config.update_from_flattened_dict({**base, **overrides})
    return config
