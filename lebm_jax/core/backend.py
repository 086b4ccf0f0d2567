"""Every choice the code makes by backend or by shape for speed, in one place, each with its reason.

None of these changes a result beyond float rounding; they change how XLA is asked to compute it.

- `chain_unroll`: Langevin chains whose score runs the conv generator are fully unrolled on CPU, because
  XLA's CPU backend runs convolutions inside a loop body many times slower (20× for the digits generator;
  partial unrolling does not help). MLP-only chains stay a compact loop: they compile several times
  faster and run as fast.
- `python_step_loop`: several training steps per dispatch are a Python loop on CPU and a ``lax.scan``
  elsewhere, for the same reason (convolutions inside a loop body).
- `up_conv_methods`: how the generator's stride-2 transposed convolutions are formulated (plain
  convolutions over output phases, or one matrix product), by output width, from CPU timings; XLA's own
  dilated-input formulation is kept where it was fastest.
"""

from __future__ import annotations

import jax

CPU_UNROLL_MAX_STEPS = 200  # longer chains stay a loop: unrolling them would make compilation too long


def on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def chain_unroll(num_steps: int, through_generator: bool) -> int:
    """``unroll`` for `lebm_jax.core.langevin.langevin_chain`: all steps for a chain through the generator
    on CPU (up to CPU_UNROLL_MAX_STEPS), else 1 (a compact loop)."""
    if through_generator and on_cpu() and num_steps <= CPU_UNROLL_MAX_STEPS:
        return max(num_steps, 1)
    return 1


def python_step_loop() -> bool:
    """Whether k training steps per dispatch run as a Python loop (CPU) rather than a ``lax.scan``."""
    return on_cpu()


def up_conv_methods(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...]) -> tuple[str, str]:
    """(forward, input gradient) of `lebm_jax.core.networks.up_conv_transpose` for x (N, H, W, C), K (4, 4, C, O).

    From timings on a 2-core CPU at the generators' shapes: XLA's plain convolutions run fastest with many
    output channels and a long contraction; with one to a few output channels a matrix product wins. Forward
    + input gradient in ms, best of 40, XLA's (lax.conv_transpose and its VJP) → this choice:
        SVHN    4×4×512→256, N 100     62.0 → 56.4   row_phases + phases
        SVHN    8×8×256→128, N 100     83.2 → 54.5   row_phases + phases
        SVHN  16×16×128→3,   N 100      5.9 → 5.3    taps + xla
        digits  4×4×32→16,   N 1000     7.3 → 5.6    row_phases + xla
        digits  8×8×16→1,    N 1000     4.6 → 2.2    taps + pairs
    """
    o = kernel_shape[-1]
    forward = "taps" if o < 8 else "row_phases"
    input_grad = "phases" if o >= 64 else ("pairs" if o == 1 else "xla")
    return forward, input_grad
