r"""Train a latent EBM.

    python -m experiments.train --config configs/digits.py --workdir runs/digits
    python -m experiments.train --config configs/digits.py --workdir runs/digits_ti \
        --config.variant=ti --config.ti.power=0.3

Running again with the same --workdir resumes from its latest checkpoint. On several hosts, start
one process per host with --distributed (jax.distributed.initialize reads the cluster from the
environment, or from --coordinator/--num_processes/--process_id).
"""

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 (with --distributed).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --distributed).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from lebm_jax.training import config as config_lib

    try:  # before any heavy import or work: a bad value stops here with its name
        config_lib.validate(_CONFIG.value)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    import jax

    from lebm_jax.core.devices import host_value
    from lebm_jax.training.loop import train_and_evaluate

    if _DISTRIBUTED.value:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    logging.info("devices: %s (process %d of %d)", jax.devices(), jax.process_index(), jax.process_count())
    result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    if jax.process_index() == 0:
        print(f"done: step {int(host_value(result.state.step))}, outputs in {result.workdir}")


if __name__ == "__main__":
    app.run(main)
