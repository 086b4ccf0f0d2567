r"""Generate images from a trained workdir: a PNG grid and an .npz of the images and latents.

    python -m experiments.sample --workdir runs/digits --num 64
    python -m experiments.sample --workdir runs/digits --num 1000 --step 1500 --out runs/digits/gen1k

Writes OUT.png (the grid) and OUT.npz (images uint8 (N, H, W, C), latents (N, nz), step); OUT defaults
to WORKDIR/samples/generated_STEP.

Errors: a bad flag value (--num below 1), a workdir without checkpoints, a --step that has none, a
damaged checkpoint or an --out under a file end with one line `error: ...` on stderr and a non-zero exit
status, before anything is written; --traceback prints the full Python traceback instead.
"""

import os

from absl import flags

from experiments import _cli

flags.adopt_module_key_flags(_cli)  # --traceback in --helpshort

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir.")
_NUM = flags.DEFINE_integer("num", 64, "Number of images.", lower_bound=1)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).", lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_OUT = flags.DEFINE_string("out", None, "Output path without extension.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    _cli.no_arguments(argv)
    if _OUT.value:
        _cli.require_parent_directory(_OUT.value, "--out", suffix=".png")
    import jax
    import numpy as np

    from lebm_jax.data import images
    from lebm_jax.api import Trained
    from lebm_jax.training.writers import quiet_library_logs

    quiet_library_logs()

    trained = Trained.load(_WORKDIR.value, _STEP.value)
    key = jax.random.key(_SEED.value)
    z = trained.prior_latents(key, _NUM.value)
    x = np.asarray(trained.decode(z))
    out = _OUT.value or os.path.join(trained.workdir, "samples", f"generated_{trained.step:07d}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    images.save_grid(x[:256], out + ".png", scale=max(1, 128 // x.shape[1]))
    np.savez(out + ".npz", images=images.to_uint8(x), latents=np.asarray(z), step=trained.step)
    print(f"wrote {out}.png and {out}.npz ({_NUM.value} images, checkpoint step {trained.step})")


if __name__ == "__main__":
    _cli.run(main)
