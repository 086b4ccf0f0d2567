r"""Every metric of a trained model, written to <workdir>/evaluation/step_<STEP>.json.

    python -m experiments.evaluate --workdir runs/digits [--checkpoint STEP]

Sample quality (FID/KID/precision/recall and their ∞ extrapolations in Inception space, or the data
set's classifier space: see lebm_jax.measure), held-out reconstruction error and TI log-likelihood,
and the gradient-variance statistics at the checkpoint.

Errors: a bad flag value, a workdir that is missing or has no checkpoints, a --checkpoint step that has
none and a damaged checkpoint end with one line `error: ...` on stderr and a non-zero exit status;
--traceback prints the full Python traceback instead.
"""

from absl import flags

from experiments import _cli

flags.adopt_module_key_flags(_cli)  # --traceback in --helpshort

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Checkpoint step (default: the latest).", lower_bound=0)
_FEATURES = flags.DEFINE_enum("feature_space", None, ["auto", "inception", "classifier", "none"],
                              "Feature space (default: the run's eval.feature_space).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Generated images (default: the run's eval.num_samples).",
                                    lower_bound=1)
_NO_INFINITY = flags.DEFINE_bool("no_infinity", False, "Skip FID∞/KID∞.")
_NO_GRADSTATS = flags.DEFINE_bool("no_gradstats", False, "Skip the gradient statistics.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    _cli.no_arguments(argv)
    from lebm_jax.training import offline

    # a missing workdir, no checkpoint or a bad step: one line from _cli.run
    results, path = offline.evaluate_checkpoint(
        _WORKDIR.value, _CHECKPOINT.value, feature_space_choice=_FEATURES.value,
        num_samples=_NUM_SAMPLES.value, infinity=not _NO_INFINITY.value,
        gradient_stats=not _NO_GRADSTATS.value,
    )
    width = max(len(k) for k in results)
    for name, value in sorted(results.items()):
        if isinstance(value, float):
            print(f"{name:<{width}}  {value:.6g}")
    print(f"written to {path}")


if __name__ == "__main__":
    _cli.run(main)
