"""Config validation: every shipped config is valid, a bad value is named, old saved configs still load."""

import re

import pytest

from lebm_jax.study import grid as study_grid
from lebm_jax.training import config as config_lib

from config_files import REPO, load_config

CONFIG_NAMES = sorted(p.stem for p in (REPO / "configs").glob("*.py") if not p.stem.startswith(("_", "study_")))


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_shipped_configs_are_valid(name):
    config = load_config(name)
    assert config_lib.validate(config) is config


@pytest.mark.parametrize(
    "field, value, phrase",
    [
        ("variant", "foo", "config.variant='foo': must be one of ('vanilla', 'ti')"),
        ("model.generator_dtype", "float16", "config.model.generator_dtype='float16': must be one of"),
        ("model.latent_dim", 0, "config.model.latent_dim=0: must be an int >= 1"),
        ("model.lik_sigma", float("nan"), "config.model.lik_sigma=nan"),
        ("posterior_chain.method", "hmc", "config.posterior_chain.method='hmc'"),
        ("optim.b2", 1.0, "config.optim.b2=1.0: must be in [0, 1)"),
        ("eval.feature_space", "clip", "config.eval.feature_space='clip'"),
        ("gradstats.num_draws", 1, "config.gradstats.num_draws=1"),
        ("steps_per_dispatch", 3, "config.steps_per_dispatch=3: must divide"),
    ],
)
def test_validate_names_the_bad_field(field, value, phrase):
    config = load_config("digits")
    config.update_from_flattened_dict({field: value})
    with pytest.raises(ValueError, match=re.escape(phrase)):
        config_lib.validate(config)


def test_from_saved_fills_fields_added_since():
    saved = load_config("digits").to_dict()
    del saved["model"]["generator_dtype"]
    del saved["eval"]
    config = config_lib.from_saved(saved)
    assert config.model.generator_dtype == "float32"
    assert config.eval.every == config_lib.base_config().eval.every
    assert config.model.generator_widths == saved["model"]["generator_widths"]
    config_lib.validate(config)


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs").glob("study_*.py")))
def test_shipped_study_configs_load_and_every_run_is_valid(name):
    """Each study config loads through the public import paths and validates all of its runs."""
    grid = study_grid.validate(load_config(name))
    variants = {spec.variant for spec in grid}
    assert variants == {"vanilla", "ti"} and len(grid) >= 8, [spec.name for spec in grid]
