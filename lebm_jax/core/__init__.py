"""Layer 0, the math: densities, chains, the ladder, the objectives and what is measured of their gradients.

Pure functions and flax modules; no configs, files or data sets (docs/design.md §1–§5).

    networks         flax modules: MLP tilt f_α, conv generator g_β, quadratic tilt, linear generator
    model            densities of the latent EBM: log π0, log p_α up to Z_α, log p_β(x|z), π_t
    langevin         ULA / MALA short-run chains as pure functions; ChainSpec, the settings of one chain
    exchange         replica exchange (parallel tempering) between neighbouring rungs of a ladder's chains
    ladder           temperature schedule t_i = (i/(N-1))^p, trapezoid, Friel correction, ti_estimate, adaptive ladder
    objectives       the Objective interface; "vanilla" and "ti"; loss_and_grads for one batch
    annealing        annealed MALA sweeps through a fine ladder: TI and AIS estimates of log p(x), the pilot
    sampling         prior latents, generation, posterior inference, TI log-likelihood of a trained model
    gradstats        total / MCMC / data variance of the learning gradient
    linear_gaussian  the exactly solvable model and its closed-form answers
    devices          the 1-D data-parallel mesh (axis "data"), reading replicated arrays to the host
    backend          every per-backend / per-shape choice made for speed, with its reason
"""
