"""Printing benchmark results: `format_table` (the plain-text report of one result, as the CLI prints it),
`format_header` (its first lines) and `summary_table` (one Markdown row per saved training result)."""

from __future__ import annotations

import math


def _si(value, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _bytes(value) -> str:
    if value is None:
        return "n/a"
    for factor, prefix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= factor:
            return f"{value / factor:.1f} {prefix}"
    return f"{value} B"


def _rows(rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(name) for name, _ in rows)
    return [f"  {name:<{width}}  {value}" for name, value in rows]


def format_header(h: dict) -> str:
    return (
        f"backend {h['backend']}: {h['device_count']} x {h['device_kind']} ({h['process_count']} process(es)), "
        f"jax {h['jax_version']}\n"
        f"config {h['config']}  variant {variant_label(h)}  batch {h['batch_size']}  image {tuple(h['image_shape'])}  "
        f"nz {h['latent_dim']}\n"
        f"chains: prior {h['prior_steps']} steps, posterior {h['posterior_steps']} steps x {h['rungs']} rung(s) "
        f"x {h['chains_per_example']} chain(s)/example; {h['steps_per_dispatch']} step(s) per dispatch"
        + (f"; {h['num_samples']} prior samples" if "num_samples" in h else "")
    )


def _memory_rows(m: dict) -> list[tuple[str, str]]:
    rows = []
    if "device_peak_bytes_in_use" in m:
        rows.append(("device peak memory", f"{_bytes(m['device_peak_bytes_in_use'])} of "
                                           f"{_bytes(m.get('device_bytes_limit'))}"))
    if "compiled_total_bytes" in m:
        parts = ", ".join(f"{name} {_bytes(m[f'compiled_{name}_bytes'])}"
                          for name in ("temp", "argument", "output", "alias"))
        rows.append((f"memory, {m['compiled_program']}",
                     f"{_bytes(m['compiled_total_bytes'])} compiled buffers ({parts})"))
    rows.append(("process max RSS", _bytes(m["max_rss_bytes"])))
    return rows


def _train_lines(result: dict) -> list[str]:
    c, s, f = result["compile"], result["step"], result["flops"]
    by_kind = f["per_step_by_kind"]
    rows = [
        ("compile", f"trace {c['trace_s']:.2f} s + lower {c['lower_s']:.2f} s + compile {c['compile_s']:.2f} s"),
        ("step time", f"median {s['median_ms']:.2f} ms  (min {s['min_ms']:.2f}, IQR {s['q25_ms']:.2f}-"
                      f"{s['q75_ms']:.2f}, max {s['max_ms']:.2f}) over {s['steps_timed']} steps"),
        ("throughput", f"{s['images_per_s']:.1f} images/s"),
        ("host input", f"{result['input']['ms_per_step']:.2f} ms/step (not in the step time)"),
        ("FLOPs / step", f"{_si(f['per_step'], 'FLOP')}  (dot {_si(by_kind['dot'])}, conv {_si(by_kind['conv'])}"
                         f" [dense {_si(by_kind['conv_dense'])}], elementwise {_si(by_kind['elementwise'])})"),
        ("XLA cost_analysis", f"{_si(f['xla_per_dispatch'], 'FLOP')} per dispatch "
                              "(one device's program, loop bodies counted once)"),
        ("achieved", f"{f['achieved_gflops_per_s']:.2f} GFLOP/s"),
        ("peak matmul", f"{f['peak_matmul_gflops_per_device']:.2f} GFLOP/s per device "
                        f"({f['peak_matmul']['size']}^3 {f['peak_matmul']['dtype']})"),
        ("efficiency", f"{100 * f['efficiency']:.1f} % of peak"),
    ]
    if by_kind["while_loops_counted_once"]:
        rows.append(("warning", f"{by_kind['while_loops_counted_once']} while loop(s): body counted once"))
    if by_kind["unfamiliar_primitives"]:
        rows.append(("warning", f"sub-programs of {by_kind['unfamiliar_primitives']} counted once"))
    if not by_kind["dead_code_eliminated"]:
        rows.append(("warning", "dead code could not be removed: FLOPs may include work XLA drops"))
    lines = _rows(rows + _memory_rows(result["memory"]))
    if "phases" in result:
        lines += ["", "  time split (pieces jitted apart on one device's share of the batch):",
                  f"    {'phase':<10} {'ms':>10} {'% step':>8} {'FLOPs':>12} {'GFLOP/s':>9}"]
        for name, p in result["phases"].items():
            rate = f"{p['gflops_per_s']:9.2f}" if p.get("gflops_per_s") is not None else f"{'':>9}"
            lines.append(f"    {name:<10} {p['ms']:10.2f} {p['pct']:8.1f} {_si(p['flops']):>12} {rate}")
        if result["phases"]["other"]["ms"] < 0:
            lines.append("    (other < 0: the pieces, timed apart, varied by more than the step's bookkeeping)")
    return lines


def _evaluation_lines(result: dict) -> list[str]:
    rows = []
    for name, what in (("generation", "generation (prior chains + generator)"),
                       ("inception", "Inception-v3 features" + ("" if result["inception"]["fid_weights"]
                                                                else " (random weights)"))):
        r = result[name]
        first = (f"compile {r['compile_s']:.2f} s" if "compile_s" in r else f"first call {r['first_call_s']:.2f} s")
        rows += [
            (name, what),
            (f"{name} call", f"median {r['median_ms']:.2f} ms (min {r['min_ms']:.2f}, max {r['max_ms']:.2f}) for "
                             f"{r['images']} images; {first}"),
            (f"{name} rate", f"{r['images_per_s']:.1f} images/s, {_si(r['flops'], 'FLOP')} per call, "
                             f"{r['gflops_per_s']:.2f} GFLOP/s = {100 * r['efficiency']:.1f} % of peak"),
        ]
    per = result["per_evaluation_s"]
    rows.append(("one evaluation", f"{result['header']['eval_num_samples']} images: generation "
                                   f"{per['generation']:.1f} s + Inception {per['inception']:.1f} s "
                                   "(reference statistics cached)"))
    peak = result["peak_matmul"]
    rows.append(("peak matmul", f"{peak['gflops']:.2f} GFLOP/s per device ({peak['size']}^3 {peak['dtype']})"))
    return _rows(rows + _memory_rows(result["memory"]))


def _sampler_lines(result: dict) -> list[str]:
    rows = []
    for name in ("prior", "posterior"):
        r = result[name]
        unit = "samples" if name == "prior" else "chains"
        extra = f", {r['images_per_s']:.1f} images/s" if name == "posterior" else ""
        rows += [
            (f"{name} compile", f"trace {r['trace_s']:.2f} s + lower {r['lower_s']:.2f} s + "
                                f"compile {r['compile_s']:.2f} s"),
            (f"{name} call", f"median {r['median_ms']:.2f} ms (min {r['min_ms']:.2f}, max {r['max_ms']:.2f}) "
                             f"for {r[unit]} {unit}"),
            (f"{name} rate", f"{r[unit + '_per_s']:.1f} {unit}/s{extra}"),
            (f"{name} FLOPs", f"{_si(r['flops'], 'FLOP')} per call (XLA: {_si(r['xla_flops'])}), "
                              f"{r['gflops_per_s']:.2f} GFLOP/s = {100 * r['efficiency']:.1f} % of peak"),
        ]
    peak = result["peak_matmul"]
    rows.append(("peak matmul", f"{peak['gflops']:.2f} GFLOP/s ({peak['size']}^3 {peak['dtype']})"))
    return _rows(rows + _memory_rows(result["memory"]))


def _options_lines(result: dict) -> list[str]:
    lines = [f"ti step with each option, {result['rounds']} rounds, one dispatch of each program per round:",
             f"  {'program':<22} {'median ms':>10} {'IQR ms':>17} {'time / ti (IQR)':>24} {'GFLOP':>9} "
             f"{'FLOPs / ti':>10}"]
    for label, r in result["options"].items():
        s = r["step"]
        ratio = f"{r['time_ratio_median']:.3f} ({r['time_ratio_q25']:.3f}-{r['time_ratio_q75']:.3f})"
        lines.append(f"  {label:<22} {s['median_ms']:>10.1f} {s['q25_ms']:>8.1f}-{s['q75_ms']:<8.1f} {ratio:>24} "
                     f"{r['flops_per_step'] / 1e9:>9.3f} {r['flops_ratio']:>10.4f}")
    return lines


def format_table(result: dict) -> str:
    """A plain-text report of `benchmark_train`, `benchmark_sampler`, `benchmark_evaluation` or
    `benchmark_ti_options`'s result."""
    body = {"train": _train_lines, "evaluation": _evaluation_lines,
            "options": _options_lines}.get(result["mode"], _sampler_lines)
    return "\n".join([format_header(result["header"]), "", *body(result)])


def _gflop(flops: float) -> str:
    g = flops / 1e9
    return f"{g:,.0f}" if g >= 100 else f"{g:.3g}"


def variant_label(header: dict) -> str:
    """"ti", or with its options "ti +RE/5" (replica exchange every 5 posterior steps) and "ti +adaptive/10"
    (ladder re-placed every 10 training steps); results saved before these fields existed read as without."""
    label = header["variant"]
    if header.get("exchange_every"):
        label += f" +RE/{header['exchange_every']}"
    if header.get("adapt_every"):
        label += f" +adaptive/{header['adapt_every']}"
    return label


def summary_table(results: list[dict]) -> str:
    """One Markdown row per `benchmark_train` result (as written with ``--json``): the step's median
    time, throughput, FLOPs, achieved rate and share of the matmul peak, and the biggest phase."""
    lines = ["| config | variant | batch | rungs | generator widths | step (median) | images/s | GFLOP/step | "
             "GFLOP/s | matmul peak GFLOP/s | efficiency | posterior chains |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r.get("mode") != "train":
            raise ValueError(f"summary_table takes training benchmarks, got mode {r.get('mode')!r}")
        h, s, f = r["header"], r["step"], r["flops"]
        widths = "/".join(map(str, h["generator_widths"])) if "generator_widths" in h else "—"
        step = f"{s['median_ms'] / 1e3:.2f} s" if s["median_ms"] >= 1000 else f"{s['median_ms']:.1f} ms"
        posterior = f"{r['phases']['posterior']['pct']:.0f} %" if "phases" in r else "—"
        lines.append(
            f"| {h['config']} | {variant_label(h)} | {h['batch_size']} | {h['rungs']} | {widths} | {step} | "
            f"{s['images_per_s']:.1f} | {_gflop(f['per_step'])} | {f['achieved_gflops_per_s']:.1f} | "
            f"{f['peak_matmul_gflops_per_device']:.0f} | {100 * f['efficiency']:.1f} % | {posterior} |"
        )
    return "\n".join(lines)
