r"""Benchmark the training step or the samplers of a config on random data (no data set is read).

    python -m experiments.benchmark --config configs/svhn.py
    python -m experiments.benchmark --config configs/svhn.py --config.variant=ti --steps 20 --json ti.json
    python -m experiments.benchmark --config configs/digits.py --mode sampler
    python -m experiments.benchmark --config configs/digits.py --mode options --steps 30   # ti +RE, +adaptive
    python -m experiments.benchmark --config configs/svhn.py --mode evaluation --config.eval.batch_size=100
    python -m experiments.benchmark --summarize vanilla.json,ti.json     # one Markdown table of saved results

--mode train (default): compile time, median and spread of the step time over --steps steps after
warm-up, images/s, the time split between prior chains, posterior chains and the update, FLOPs per
step counted on the jaxpr (loops × trip count) next to XLA's estimate, achieved GFLOP/s against a
measured float32 matmul peak, and memory. --mode sampler: prior samples/s and posterior chains/s.
--mode options: the ti step plain, with replica exchange (--exchange_every) and with the adaptive ladder
(--adapt_every), compiled in one process and timed in turn, one dispatch of each per round; each one's time
and FLOPs relative to plain ti.
--mode evaluation: images/s of the generation and the Inception-v3 feature extraction that a sample-quality
evaluation runs (eval.batch_size images per call), and the seconds one evaluation of eval.num_samples costs.
See lebm_jax.bench.run and lebm_jax.bench.flops for what each number means.

Errors: a bad flag or config value, an unknown --config.<field>, --steps below 10, a --json path under a
file and an unreadable --summarize file end with one line `error: ...` on stderr and a non-zero exit
status, before any compilation; --traceback prints the full Python traceback instead.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from experiments import _cli

flags.adopt_module_key_flags(_cli)  # --traceback in --helpshort

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sampler", "evaluation", "options"], "What to benchmark.")
_EXCHANGE_EVERY = flags.DEFINE_integer("exchange_every", 5, "--mode options: ti.exchange_every of the replica-"
                                       "exchange program (0: leave it out).")
_ADAPT_EVERY = flags.DEFINE_integer("adapt_every", 10, "--mode options: ti.adapt_every of the adaptive-ladder "
                                    "program (0: leave it out).")
_STEPS = flags.DEFINE_integer("steps", 10, "Training steps (train) or calls (sampler, evaluation) to time, at least 10.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Dispatches run after compilation and before timing (train).")
_PHASES = flags.DEFINE_bool("phases", True, "Also time prior chains, posterior chains and the update apart (train).")
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", 0, "n of the n×n float32 matmul peak; 0: 4096, 1024 on CPU.")
_JSON = flags.DEFINE_string("json", None, "Write the result to this JSON file.")
_ALLOW_FEW_STEPS = flags.DEFINE_bool("allow_few_steps", False, "Smoke tests only: allow --steps below 10.")
_SUMMARIZE = flags.DEFINE_list("summarize", None, "Run nothing: print one Markdown table of these training "
                               "benchmarks' --json files (comma-separated).")


def main(argv):
    _cli.no_arguments(argv)
    from lebm_jax import bench
    from lebm_jax.training import config as config_lib

    if _SUMMARIZE.value:
        results = []
        for path in _SUMMARIZE.value:
            try:
                with open(path) as f:
                    results.append(json.load(f))
            except (OSError, json.JSONDecodeError) as e:
                raise _cli.UserError(f"--summarize {path}: {e}") from None
        try:
            print(bench.summary_table(results))
        except (KeyError, ValueError) as e:
            raise _cli.UserError(f"--summarize: not a training benchmark's JSON ({e})") from None
        return
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required (or --summarize FILES)")
    # before any compilation: a bad value stops here with its name (one line from _cli.run)
    config_lib.validate(config)
    if _STEPS.value < bench.MIN_STEPS and not _ALLOW_FEW_STEPS.value:
        raise _cli.UserError(f"--steps={_STEPS.value}: time at least {bench.MIN_STEPS} steps")
    _cli.require_parent_directory(_JSON.value, "--json")
    name = config_flags.get_config_filename(flags.FLAGS["config"])
    common = dict(matmul_size=_MATMUL_SIZE.value or None, config_name=name, allow_few_steps=_ALLOW_FEW_STEPS.value)
    if _MODE.value == "train":
        result = bench.benchmark_train(config, steps=_STEPS.value, warmup=_WARMUP.value, phases=_PHASES.value,
                                      **common)
    elif _MODE.value == "options":
        result = bench.benchmark_ti_options(config, steps=_STEPS.value, warmup=_WARMUP.value,
                                            exchange_every=_EXCHANGE_EVERY.value, adapt_every=_ADAPT_EVERY.value,
                                            config_name=name, allow_few_steps=_ALLOW_FEW_STEPS.value)
    elif _MODE.value == "sampler":
        result = bench.benchmark_sampler(config, repeats=_STEPS.value, **common)
    else:
        result = bench.benchmark_evaluation(config, repeats=_STEPS.value, **common)
    print(bench.format_table(result), flush=True)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {_JSON.value}")


if __name__ == "__main__":
    _cli.run(main)
