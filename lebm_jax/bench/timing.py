"""Wall time, compile time, the measured matmul peak and memory.

- `time_fn`: wall time of a call until its outputs are ready, repeated after warm-up (`Timing`);
- `compile_timed`: trace, lower and compile times of a jitted function;
- `matmul_peak`: measured throughput of one float32 (n×n) @ (n×n) product on one device, with the default
  matmul precision (the one the training step uses): the benchmark's efficiency is achieved GFLOP/s over
  this peak times the number of devices;
- `memory_report`: device allocator statistics, a compiled program's buffer sizes and the process's peak
  resident memory (`max_rss_bytes`).
"""

from __future__ import annotations

import dataclasses
import platform
import resource
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Timing:
    seconds: tuple[float, ...]  # one per timed call

    def summary(self, per: float = 1.0) -> dict:
        """Median, spread and mean in milliseconds of each call divided by ``per`` (e.g. steps per call)."""
        ms = np.asarray(self.seconds) * 1e3 / per
        q25, median, q75 = np.percentile(ms, [25, 50, 75])
        return {"median_ms": float(median), "min_ms": float(ms.min()), "max_ms": float(ms.max()),
                "q25_ms": float(q25), "q75_ms": float(q75), "mean_ms": float(ms.mean()), "calls": int(ms.size)}

    @property
    def median(self) -> float:
        return float(np.median(self.seconds))


def time_fn(fn: Callable, *args, repeats: int = 10, warmup: int = 1, carry: bool = False) -> Timing:
    """Wall time of ``fn(*args)`` until its outputs are ready, ``repeats`` times after ``warmup`` calls.

    With ``carry``, ``fn`` returns ``(new_first_arg, out)`` and each call gets the previous call's
    first result (a training state that the function donates).
    """
    args = list(args)

    def call():
        out = fn(*args)
        if carry:
            args[0] = out[0]
        jax.block_until_ready(out)

    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return Timing(tuple(seconds))


def compile_timed(fn: Callable, *args) -> tuple[Any, jax.stages.Traced, dict]:
    """(compiled, traced, {"trace_s", "lower_s", "compile_s"}) of a jitted ``fn`` on ``args``."""
    t0 = time.perf_counter()
    traced = fn.trace(*args)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    return compiled, traced, {"trace_s": t1 - t0, "lower_s": t2 - t1, "compile_s": t3 - t2}


def default_matmul_size() -> int:
    """4096 on accelerators; 1024 on CPU, where a 4096³ product takes seconds."""
    return 1024 if jax.default_backend() == "cpu" else 4096


def matmul_peak(size: int | None = None, dtype=jnp.float32, repeats: int = 5) -> dict:
    """Measured throughput of one jitted (n×n) @ (n×n) product on the default device, with the default
    matmul precision (what the training step uses): {"gflops", "size", "median_ms"}."""
    n = int(size or default_matmul_size())
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), dtype)
    b = jax.random.normal(kb, (n, n), dtype)
    fn = jax.jit(jnp.matmul).lower(a, b).compile()
    timing = time_fn(fn, a, b, repeats=repeats, warmup=1)
    return {"gflops": 2.0 * n**3 / timing.median / 1e9, "size": n, "dtype": jnp.dtype(dtype).name,
            "median_ms": timing.median * 1e3}


def max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if platform.system() == "Darwin" else rss * 1024)  # Linux reports KiB


def memory_report(compiled=None, program: str = "") -> dict:
    """Device allocator statistics where the backend keeps them (GPU/TPU; the peak is over the process's
    life so far), the buffer sizes of the compiled ``program``, and the process's peak resident memory."""
    out: dict = {}
    stats = jax.local_devices()[0].memory_stats()
    if stats:
        for key in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit"):
            if key in stats:
                out[f"device_{key}"] = int(stats[key])
    if compiled is not None:
        try:
            ma = compiled.memory_analysis()
        except Exception:  # noqa: BLE001
            ma = None
        if ma is not None:
            sizes = {name: int(getattr(ma, f"{name}_size_in_bytes", 0) or 0)
                     for name in ("temp", "argument", "output", "alias", "generated_code")}
            out.update({f"compiled_{k}_bytes": v for k, v in sizes.items()})
            out["compiled_total_bytes"] = sizes["temp"] + sizes["argument"] + sizes["output"] - sizes["alias"]
            out["compiled_program"] = program
    out["max_rss_bytes"] = max_rss_bytes()
    return out
