"""FLOPs of a program, counted on its jaxpr (`count_flops`), and XLA's own estimate (`xla_flops`).

XLA's ``cost_analysis()`` counts the body of a loop once, whatever its trip count, and our Langevin
chains are ``lax.scan`` loops (on CPU the posterior chain is unrolled and the steps of a dispatch are a
Python loop, so there XLA misses mostly the prior chain's steps). So the benchmark counts on the
jaxpr. Conventions, per operation of the traced program after dead code elimination (work no output
depends on is not counted, as XLA does not run it):

- ``dot_general``: 2 · (output elements) · (contracted size), exact.
- ``conv_general_dilated``: 2 · (output elements) · (input features per group) · (kernel taps that land
  on a real input element): taps that fall on padding or on the holes of an lhs (input) dilation, as in
  a transposed convolution, are not counted. This is what XLA's cost analysis counts for one
  convolution. The standard dense formula 2·N·out_spatial·kh·kw·(Cin/groups)·Cout, which also counts
  those taps (4× more for the generator's stride-2 layers), is reported apart as ``conv_dense``.
- floating-point elementwise arithmetic (add, mul, exp, tanh, …): 1 per output element; reductions:
  1 per input element. Data movement, comparisons and integer work (PRNG bits) count 0.
- sub-jaxprs: jit/pjit, calls, custom_jvp/custom_vjp, remat counted once; ``scan`` × its ``length``;
  ``cond``: the costliest branch; ``shard_map`` × the number of devices it is manual over (counts are
  global, over all devices); ``while`` (trip count unknown): body counted once and reported in
  ``while_loops``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

ELEMENTWISE = frozenset("""
    abs acos acosh add add_any asin asinh atan atan2 atanh cbrt ceil clamp cos cosh digamma div erf
    erf_inv erfc exp exp2 expm1 floor igamma integer_pow lgamma log log1p logistic max min mul neg
    nextafter pow reciprocal rem round rsqrt sign sin sinh sqrt square sub tan tanh
""".split())
REDUCTIONS = frozenset("""
    reduce_sum reduce_max reduce_min reduce_prod argmax argmin cumsum cumprod cummax cummin cumlogsumexp
""".split())
CALLS = frozenset("""
    pjit jit closed_call core_call remat2 checkpoint custom_jvp_call custom_vjp_call custom_vjp_call_jaxpr
""".split())


@dataclasses.dataclass
class FlopCount:
    """FLOPs of a program by kind (see the module docstring for the conventions)."""

    dot: float = 0.0
    conv: float = 0.0  # taps on real input elements only
    conv_dense: float = 0.0  # the dense formula, for reference (not part of total)
    elementwise: float = 0.0
    while_loops: int = 0  # while loops whose body was counted once (trip count unknown)
    by_primitive: Counter = dataclasses.field(default_factory=Counter)
    unfamiliar: set = dataclasses.field(default_factory=set)  # primitives with sub-jaxprs counted once
    dead_code_eliminated: bool = False  # see `eliminate_dead_code`

    @property
    def matmul(self) -> float:
        """dot_general + conv_general_dilated."""
        return self.dot + self.conv

    @property
    def total(self) -> float:
        return self.dot + self.conv + self.elementwise

    def add(self, other: "FlopCount", times: float = 1.0) -> None:
        self.dot += times * other.dot
        self.conv += times * other.conv
        self.conv_dense += times * other.conv_dense
        self.elementwise += times * other.elementwise
        self.while_loops += other.while_loops
        for name, value in other.by_primitive.items():
            self.by_primitive[name] += times * value
        self.unfamiliar |= other.unfamiliar

    def scaled(self, factor: float) -> "FlopCount":
        out = FlopCount(dead_code_eliminated=self.dead_code_eliminated)
        out.add(self, times=factor)
        return out

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "dot": self.dot,
            "conv": self.conv,
            "conv_dense": self.conv_dense,
            "elementwise": self.elementwise,
            "while_loops_counted_once": self.while_loops,
            "unfamiliar_primitives": sorted(self.unfamiliar),
            "dead_code_eliminated": self.dead_code_eliminated,
        }


def _size(aval) -> int:
    return math.prod(aval.shape) if hasattr(aval, "shape") else 1


def _is_float(aval) -> bool:
    try:
        return bool(jnp.issubdtype(aval.dtype, jnp.inexact))
    except (AttributeError, TypeError):
        return False  # tokens, PRNG key types


def dot_general_flops(lhs_shape, out_shape, dimension_numbers) -> float:
    """2 · (output elements) · (size of the contracted axes)."""
    (lhs_contract, _), _ = dimension_numbers
    return 2.0 * math.prod(out_shape) * math.prod(lhs_shape[d] for d in lhs_contract)


def _valid_taps(in_size, kernel, out_size, stride, pad_lo, lhs_dil, rhs_dil) -> int:
    """(output position, kernel tap) pairs along one spatial axis whose input index is a real element
    (not padding, not a hole of the input dilation)."""
    pos = np.arange(out_size)[:, None] * stride + np.arange(kernel)[None, :] * rhs_dil - pad_lo
    valid = (pos >= 0) & (pos <= (in_size - 1) * lhs_dil) & (pos % lhs_dil == 0)
    return int(valid.sum())


def conv_flops(lhs_shape, rhs_shape, out_shape, params) -> tuple[float, float]:
    """(exact, dense) FLOPs of one conv_general_dilated; see the module docstring."""
    dn = params["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    spatial = len(lhs_spec) - 2
    in_features = rhs_shape[rhs_spec[1]]  # already Cin / feature_group_count
    out_spatial = [out_shape[out_spec[2 + i]] for i in range(spatial)]
    kernel = [rhs_shape[rhs_spec[2 + i]] for i in range(spatial)]
    batch_features = math.prod(out_shape) // max(math.prod(out_spatial), 1)  # N · Cout
    lhs_dil = params.get("lhs_dilation") or (1,) * spatial
    rhs_dil = params.get("rhs_dilation") or (1,) * spatial
    taps = math.prod(
        _valid_taps(lhs_shape[lhs_spec[2 + i]], kernel[i], out_spatial[i], params["window_strides"][i],
                    params["padding"][i][0], lhs_dil[i], rhs_dil[i])
        for i in range(spatial)
    )
    dense_taps = math.prod(out_spatial) * math.prod(kernel)
    return 2.0 * batch_features * in_features * taps, 2.0 * batch_features * in_features * dense_taps


def _sub_jaxprs(value):
    if isinstance(value, jex.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jex.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def _count_jaxpr(jaxpr: jex.Jaxpr) -> FlopCount:
    count = FlopCount()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        params = eqn.params
        ins = [v.aval for v in eqn.invars]
        outs = [v.aval for v in eqn.outvars]
        if name == "dot_general":
            flops = dot_general_flops(ins[0].shape, outs[0].shape, params["dimension_numbers"])
            count.dot += flops
            count.by_primitive[name] += flops
        elif name == "conv_general_dilated":
            exact, dense = conv_flops(ins[0].shape, ins[1].shape, outs[0].shape, params)
            count.conv += exact
            count.conv_dense += dense
            count.by_primitive[name] += exact
        elif name in ELEMENTWISE:
            if outs and _is_float(outs[0]):
                flops = float(sum(_size(a) for a in outs))
                count.elementwise += flops
                count.by_primitive[name] += flops
        elif name in REDUCTIONS:
            if ins and _is_float(ins[0]):
                flops = float(sum(_size(a) for a in ins))
                count.elementwise += flops
                count.by_primitive[name] += flops
        elif name == "scan":
            count.add(_count_jaxpr(params["jaxpr"].jaxpr), times=params["length"])
        elif name == "while":
            count.add(_count_jaxpr(params["cond_jaxpr"].jaxpr))
            count.add(_count_jaxpr(params["body_jaxpr"].jaxpr))
            count.while_loops += 1
        elif name == "cond":
            branches = [_count_jaxpr(b.jaxpr) for b in params["branches"]]
            count.add(max(branches, key=lambda c: c.total))
        elif name == "shard_map":
            mesh = params["mesh"]
            axes = params.get("newly_manual_axes", params.get("manual_axes"))
            axes = mesh.axis_names if axes is None else axes
            devices = math.prod(dict(mesh.shape)[a] for a in axes)
            count.add(_count_jaxpr(params["jaxpr"]), times=devices)
        else:
            subs = [j for value in params.values() for j in _sub_jaxprs(value)]
            for sub in subs:
                count.add(_count_jaxpr(sub))
            if subs and name not in CALLS:
                count.unfamiliar.add(name)
    return count


def eliminate_dead_code(jaxpr: jex.Jaxpr) -> tuple[jex.Jaxpr, bool]:
    """(jaxpr without the equations no output depends on, whether that was done).

    Traced programs hold work XLA never runs: e.g. the custom VJP of the generator's layers computes a
    kernel gradient that a Langevin score (a gradient in z only) discards. JAX's own pass (recursing
    into scan, while, cond, jit and shard_map bodies) is internal API; where it is missing the jaxpr is
    counted as it stands and the count says so (``dead_code_eliminated`` False).
    """
    try:
        from jax._src.interpreters import partial_eval as pe  # local: internal API, may be missing or moved

        return pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))[0], True
    except Exception:  # noqa: BLE001  (internal API moved or refused the program)
        return jaxpr, False


def count_flops(fn_or_jaxpr, *args, dce: bool = True, **kwargs) -> FlopCount:
    """FLOPs of a program: a (Closed)Jaxpr, a `jax.stages.Traced`, or a function traced on ``args``.

    Loops are counted with their trip counts (``scan`` × length); with ``dce`` (default) only the work
    some output depends on is counted, as XLA would run it. See the module docstring.
    """
    obj = fn_or_jaxpr
    if isinstance(obj, jax.stages.Traced):
        obj = obj.jaxpr
    elif not isinstance(obj, (jex.ClosedJaxpr, jex.Jaxpr)):
        obj = jax.make_jaxpr(obj)(*args, **kwargs)
    if isinstance(obj, jex.ClosedJaxpr):
        obj = obj.jaxpr
    eliminated = False
    if dce:
        obj, eliminated = eliminate_dead_code(obj)
    count = _count_jaxpr(obj)
    count.dead_code_eliminated = eliminated
    return count


def xla_flops(compiled) -> float | None:
    """XLA's own estimate (``compiled.cost_analysis()['flops']``): loop bodies are counted once."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (backends without a cost model)
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])
