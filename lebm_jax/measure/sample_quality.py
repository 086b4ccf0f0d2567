"""Sample quality: generated images against the training split, in a feature space (design.md §6).

``eval.num_samples`` images g_β(z), z ~ p_α (the prior chain), are embedded in a feature space
(`lebm_jax.measure.features`) and compared with the training split's reference statistics
(`lebm_jax.measure.metrics`): Fréchet distance with its bootstrap standard error over
``eval.fd_bootstrap`` resamples of the generated set (0: none), KID, precision/recall, optionally
FID∞/KID∞. In Inception space the names are ``fid``, ``fid_se``, ``kid``, ...; in the data set's classifier
space ``fd_classifier``, ``fd_se_classifier``, ``kid_classifier``, ... (never "fid").
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from lebm_jax.core import sampling
from lebm_jax.core.devices import data_mesh, gather
from lebm_jax.core.langevin import ChainSpec
from lebm_jax.core.model import LatentEBM
from lebm_jax.measure import metrics
from lebm_jax.measure.base import Context
from lebm_jax.measure.features import FeatureSpace, feature_space, reference_statistics

Params = Any


class SampleQuality:
    """Sample-quality metrics of generated images in a feature space (see the module docstring)."""

    name = "sample_quality"
    prefix = "eval/"

    def __init__(self, eval_config: ml_collections.ConfigDict, model: LatentEBM, prior_chain: ChainSpec,
                 space: FeatureSpace, reference: metrics.ReferenceStatistics, mesh=None):
        self.config = eval_config
        self.every = eval_config.every
        self.space = space
        self.reference = reference
        self.info = {"feature_space": space.name, "num_samples": int(eval_config.num_samples), **space.info}
        mesh = mesh if mesh is not None else data_mesh()
        if eval_config.batch_size % mesh.size:
            raise ValueError(f"eval.batch_size={eval_config.batch_size} must be divisible by the {mesh.size} devices")
        self._generate = sampling.make_generate_fn(model, prior_chain, eval_config.batch_size, mesh)

    @staticmethod
    def schedule(config: ml_collections.ConfigDict) -> int:
        return config.eval.every

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, context: Context) -> "SampleQuality | None":
        space = feature_space(config.eval.feature_space, context.data, config.eval.batch_size)
        if space is None:
            return None
        reference = reference_statistics(space, context.data, config.eval.max_reference)
        return cls(config.eval, context.model, context.objective.prior_chain, space, reference, context.mesh)

    def samples(self, params: Params, key: jax.Array, num: int | None = None) -> np.ndarray:
        """``num`` (default eval.num_samples) generated images in [-1, 1], as numpy."""
        num = self.config.num_samples if num is None else num
        batches = []
        for i in range(-(-num // self.config.batch_size)):
            batches.append(self._generate(params, jax.random.fold_in(key, i)))  # dispatched asynchronously
        return np.concatenate([gather(b) for b in batches])[:num]

    def __call__(self, params: Params, key: jax.Array, *, infinity: bool | None = None) -> dict[str, float]:
        feats = self.space.features(self.samples(params, key))
        infinity = self.config.infinity if infinity is None else infinity
        out = metrics.sample_quality(
            feats, self.reference, self.space.name, kid_subsets=self.config.kid_subsets,
            kid_subset_size=self.config.kid_subset_size, infinity=infinity, fd_bootstrap=self.config.fd_bootstrap,
        )
        return {name: float(v) for name, v in out.items()}
