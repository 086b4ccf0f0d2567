r"""The full-scale variance study on SVHN: vanilla at batch 100, 25, 50 and 200, and ti with N = 10 rungs for
p ∈ {0.1, 0.3, 1, 2, 3, 6, 10}, and ti from p = 1 with replica exchange every 5 posterior steps and with the
adaptive ladder (re-placed every 100 steps), five seeds each (65 runs of configs/svhn.py, Inception FID every
5,000 steps).

    python -m experiments.study --config configs/study_svhn.py --workdir runs/study_svhn

Expected time on one GPU (an estimate, not a measurement: no GPU was at hand). A training step costs 548 GFLOP
(vanilla) and 4955 GFLOP (ti, N = 10), counted by ``experiments.benchmark`` with loop trip counts; at an
assumed sustained 25 TFLOP/s (TF32 on an H100-class card) a 51,240-step run takes about 0.3 h (vanilla, batch
100) and 2.8 h (ti); with replica exchange a step costs 5052 GFLOP (2% more: one generator pass over the rungs
per exchange round; ``experiments.benchmark --mode options``; the adaptive ladder's update adds a few hundred
FLOPs), about 2.9 h a run; so the grid needs about 6 h of vanilla runs and 127 h of ti runs, some 133
GPU-hours in all, plus evaluation. Run ``python -m experiments.benchmark --config configs/svhn.py
[--config.variant=ti]`` on the card first and scale by its measured step time. Pang et al. report FID 29.44
for the vanilla model.
"""

from pathlib import Path

from lebm_jax.training.config import from_file
from lebm_jax.study.grid import full_scale


def get_config():
    return full_scale("svhn", from_file(Path(__file__).with_name("svhn.py")))
