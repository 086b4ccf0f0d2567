"""The benchmark of the training step, the samplers and a sample-quality evaluation (`experiments.benchmark`).

    flops     FLOPs counted on the jaxpr, loops × trip count: count_flops, FlopCount, dot/conv FLOPs,
              eliminate_dead_code; XLA's own estimate, xla_flops
    timing    Timing, time_fn, compile_timed, the measured matmul peak (matmul_peak), memory_report
    run       the benchmarks: benchmark_train, benchmark_sampler, benchmark_evaluation, benchmark_ti_options
              (the ti step with replica exchange and with the adaptive ladder, interleaved); the pieces of a
              step jitted apart (step_pieces) and their FLOPs on shapes only (step_flops); MIN_STEPS
    format    printing a result: format_table, format_header; summary_table (Markdown, saved results)
"""

from lebm_jax.bench.flops import FlopCount, conv_flops, count_flops, dot_general_flops, eliminate_dead_code, xla_flops
from lebm_jax.bench.format import format_header, format_table, summary_table
from lebm_jax.bench.run import (
    MIN_STEPS,
    benchmark_evaluation,
    benchmark_phases,
    benchmark_sampler,
    benchmark_ti_options,
    benchmark_train,
    step_flops,
    step_pieces,
    ti_option_configs,
)
from lebm_jax.bench.timing import Timing, compile_timed, matmul_peak, max_rss_bytes, memory_report, time_fn

__all__ = [
    "MIN_STEPS", "FlopCount", "Timing", "benchmark_evaluation", "benchmark_phases", "benchmark_sampler",
    "benchmark_ti_options", "benchmark_train", "compile_timed", "conv_flops", "count_flops",
    "dot_general_flops", "eliminate_dead_code", "format_header", "format_table", "matmul_peak", "max_rss_bytes",
    "memory_report", "step_flops", "step_pieces", "summary_table", "ti_option_configs", "time_fn", "xla_flops",
]
