r"""Train a latent EBM.

    python -m experiments.train --config configs/digits.py --workdir runs/digits
    python -m experiments.train --config configs/digits.py --workdir runs/digits_ti \
        --config.variant=ti --config.ti.power=0.3

Running again with the same --workdir resumes from its latest checkpoint; the config must then match the
saved one outside lebm_jax.training.checkpoint.RESUMABLE_FIELDS. --allow_config_change: resume a
workdir although the config differs from the saved one in non-resumable fields; the change and its step
are recorded in <workdir>/config_changes.jsonl. (A field that changes the parameters' shapes can never
change on resume.) On several hosts, start one process per host with --distributed
(jax.distributed.initialize reads the cluster from the environment, or from
--coordinator/--num_processes/--process_id).

Errors: a bad flag or config value, an unknown --config.<field>, a --workdir that is (or lies under) a file,
a missing data set and a checkpoint that is damaged or does not fit end the run with one line
`error: ...` on stderr and a non-zero exit status, before anything is written; Ctrl-C exits with status
130 (run the same command again to resume). --traceback prints the full Python traceback instead.
"""

from absl import flags, logging
from ml_collections import config_flags

from experiments import _cli

flags.adopt_module_key_flags(_cli)  # --traceback in --helpshort

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume the workdir although the config differs from the saved one in "
    "non-resumable fields; the change and its step are recorded in <workdir>/config_changes.jsonl.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 (with --distributed).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --distributed).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    _cli.no_arguments(argv)
    from lebm_jax.training import config as config_lib

    # before any heavy import or work: a bad value or workdir stops here with its name
    config_lib.validate(_CONFIG.value)
    _cli.require_directory(_WORKDIR.value, "--workdir")
    import jax

    from lebm_jax.core.devices import host_value
    from lebm_jax.training.loop import train_and_evaluate

    if _DISTRIBUTED.value:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    logging.info("devices: %s (process %d of %d)", jax.devices(), jax.process_index(), jax.process_count())
    result = train_and_evaluate(_CONFIG.value, _WORKDIR.value, allow_config_changes=_ALLOW_CONFIG_CHANGE.value)
    if jax.process_index() == 0:
        print(f"done: step {int(host_value(result.state.step))}, outputs in {result.workdir}")


if __name__ == "__main__":
    _cli.run(main, on_interrupt="run the same command again to resume from the latest checkpoint")
