r"""Generate images from a trained workdir: a PNG grid and an .npz of the images and latents.

    python -m experiments.sample --workdir runs/digits --num 64
    python -m experiments.sample --workdir runs/digits --num 1000 --step 1500 --out runs/digits/gen1k

Writes OUT.png (the grid) and OUT.npz (images uint8 (N, H, W, C), latents (N, nz), step); OUT defaults
to WORKDIR/samples/generated_STEP.
"""

import os

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir.")
_NUM = flags.DEFINE_integer("num", 64, "Number of images.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_OUT = flags.DEFINE_string("out", None, "Output path without extension.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax
    import numpy as np

    from lebm_jax.data import images
    from lebm_jax.api import Trained
    from lebm_jax.training.writers import quiet_library_logs

    quiet_library_logs()

    if _NUM.value < 1:
        raise app.UsageError(f"--num={_NUM.value} must be >= 1")
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
    app.run(main)
