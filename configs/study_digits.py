r"""The variance study on scikit-learn's digits: the README's main job, minutes on two CPU cores.

    python -m experiments.study --config configs/study_digits.py --workdir runs/study
    python -m experiments.report --workdir runs/study        # (also run at the end of the study)

vanilla; ti with N = 10 rungs at p = 1; the same with replica exchange; ti with the adaptive ladder started
from p = 1; two seeds each: 8 runs of configs/digits.py shortened to 200 steps at batch 50, with the
gradient statistics (R = 4 draws) and the classifier-space sample quality (500 samples) every 50 steps, and
the held-out log-likelihood protocol (TI and AIS, one setting for every run) at steps 0 and 200. Every run
of a seed starts from the same parameters, so the protocol's step-0 sweep is computed once per seed and read
by the seed's other runs (the study's evaluation cache; bit-identical). Override any training field with
--config.train.<field>.

Kept within 15 minutes on the project's 2-core CPU (measured in a fresh clone: 14 min 56 s with an empty
compilation cache, 10 min 27 s with a warm one, install included): the fixed p = 0.3 and p = 3 groups of
earlier versions are left out (both exchange and adaptive groups start from p = 1 and are judged against it),
and the protocol scores 16 test images instead of 32. Add the groups back with
--config.powers="(0.3, 1.0, 3.0)" (2 to 3 minutes per group) and the images with
--config.train.loglik.num_examples=32; the full-scale configs keep all of it.
"""

from pathlib import Path

import ml_collections

from lebm_jax.training.config import from_file


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "digits"
    t = from_file(Path(__file__).with_name("digits.py"))
    t.batch_size = 50
    t.num_steps = 200
    t.log_every = 25
    t.checkpoint_every = 100
    t.sample_every = 200
    t.num_heldout = 297
    t.eval.every = 50
    t.eval.num_samples = 500
    t.eval.kid_subsets = 10
    t.eval.kid_subset_size = 250
    t.gradstats.every = 50
    t.gradstats.num_draws = 4
    # The held-out log-likelihood protocol, the same for every run: 16 test images, 4 chains each, a ladder
    # of 51 TI rungs (p = 4) with 20 AIS rungs per interval and 10 MALA steps per TI rung, at the start and
    # the end (steps 0 and 200). Half the default ladder (101 rungs, 40 AIS rungs per interval, verified at
    # image scale on the linear-Gaussian model), for time; its own checks (TI against AIS, full against half
    # ladder) are in the report.
    t.loglik.every = 200
    t.loglik.num_examples = 16
    t.loglik.num_temps = 51
    t.loglik.ais_substeps = 20
    t.loglik.prior_steps = 50
    t.loglik.train_draws = 4
    c.train = t
    c.vanilla = True
    c.batch_sizes = ()  # extra vanilla batch sizes
    c.powers = (1.0,)
    c.num_temps = 10
    # ti p = 1 with replica exchange between neighbouring rungs every 5 of the posterior chain's 20 steps
    # (configs/digits.py keeps the reference 20): 4 rounds alternating even and odd pairs, so every pair is
    # proposed twice per chain and step. Every 10 would propose each pair once; every 20 only the even pairs.
    c.exchange_powers = (1.0,)
    c.exchange_every = 5
    # ti with the adaptive ladder, started from p = 1 and re-placed every 10 of the 200 steps (20
    # placements); the moving average of rate 0.9 restarts at each placement, so each one rests on the 10
    # steps (500 examples at batch 50) since the last: fewer steps are noisier, more leave fewer placements
    # to follow the model as it trains.
    c.adaptive_powers = (1.0,)
    c.adapt_every = 10
    c.adapt_decay = 0.9
    c.seeds = (0, 1)
    c.compile_cache = True  # XLA's persistent cache: the second seed of a group compiles nothing
    return c
