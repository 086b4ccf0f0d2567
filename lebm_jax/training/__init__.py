"""Layer 3, training: configs become runs, runs become checkpoints, checkpoints become `Trained` models.

    config    the fields, defaults and validation of an experiment config
    build     config -> model, chains, objective, optimisers, and every PRNG key of a run (RunKeys)
    step      TrainState, the per-device step (pmean over "data"), the jitted k-step driver, global batches
    loop      train_and_evaluate: resume, train, log, checkpoint, sample grids, evaluators when due
    checkpoint  Orbax checkpoints of the state and its config, atomic, checksummed
    writers   TensorBoard + metrics.jsonl
    trained   Trained: a checkpoint's jitted samplers for use from Python (also `lebm_jax.api.Trained`)
    offline   evaluate_checkpoint: every metric of a checkpoint, with training's evaluators and keys
"""
