"""One call to judge a GLA kernel: :func:`judge` runs the golden cases and drawn inputs.

Every tensor of every case is compared with the reference under the error model; the failing
ones come back in one table (:class:`Verdict`, or judge's AssertionError).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gla_np._checks import check_choice, check_positive_int
from gla_np.testing.comparison import _worst
from gla_np.testing.error_model import _dtype_name, _magnitudes_of, bound
from gla_np.testing.float64_reference import LAYOUTS, NAMES, _heads_major, reference
from gla_np.testing.strategies import gla_examples


class Verdict(NamedTuple):
    """What :func:`judge` found: one row per tensor per case (every tensor, passing or not)."""

    rows: list  # dicts: case, and what assert_close finds (name, ratio, failed, index, ...)
    failures: list  # the rows over their bound
    worst: float  # the largest |error| / bound over every row
    table: str  # the failing rows, as judge's AssertionError prints them


INPUT_DTYPES = {"float64": np.float64, "float32": np.float32, "tf32": np.float32,
                "float16": np.float16, "bfloat16": np.float32}


def _call_kernel(forward, backward, inputs, cu_seqlens):
    """The kernel's seven tensors on one case. Convention: ``forward(q, k, v, g, *, scale,
    initial_state[, cu_seqlens]) -> (o, final_state[, ctx])`` and ``backward(do,
    d_final_state, ctx) -> (dq, dk, dv, dg, d_initial_state)``; None for every input a case
    does not use (no initial state, no do, no final-state gradient)."""
    options = dict(scale=inputs["scale"], initial_state=inputs.get("initial_state"))
    if cu_seqlens is not None:
        options["cu_seqlens"] = cu_seqlens
    out = forward(inputs["q"], inputs["k"], inputs["v"], inputs["g"], **options)
    got = dict(o=out[0], final_state=out[1])
    do, dS_T = inputs.get("do"), inputs.get("d_final_state")
    if backward is not None and (do is not None or dS_T is not None):
        grads = backward(do, dS_T, out[2] if len(out) > 2 else None)
        got.update(zip(NAMES[2:], grads))
    return got


def _compare(case, got, ref, dtype, dg_identity):
    rows = []
    for name in NAMES:
        want = getattr(ref, name)
        if want is None or name not in got:
            continue
        mags = _magnitudes_of(ref, name, dg_identity)
        if got[name] is None:
            rows.append(dict(case=case, name=name, ratio=np.inf, failed=want.size,
                             size=want.size, index=(), got=np.nan, want=np.nan, error=np.inf,
                             bound=0.0, magnitude=0.0, missing=True))
            continue
        try:
            w = _worst(name, got[name], want, bound(name, ref, dtype=dtype,
                                                    dg_identity=dg_identity), mags.magnitude)
        except AssertionError as err:  # a wrong shape
            w = dict(name=name, ratio=np.inf, failed=want.size, size=want.size, index=(),
                     got=np.nan, want=np.nan, error=np.inf, bound=0.0, magnitude=0.0,
                     shape=str(err))
        rows.append(dict(case=case, **w))
    return rows


def _table(rows):
    head = "| case | tensor | entries over | worst error / bound | at index | got | reference |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("missing"):
            ratio = "missing (the kernel returned None)"
        elif "shape" in r:
            ratio = r["shape"]
        elif r["magnitude"] == 0:
            ratio = "reference magnitude 0 (bound = atol)"
        else:
            ratio = f"{r['ratio']:.3g}"
        lines.append(f"| {r['case']} | {r['name']} | {r['failed']} of {r['size']} | {ratio} | "
                     f"{r['index']} | {r['got']:.6g} | {r['want']:.6g} |")
    return "\n".join(lines)


def _describe_example(ex, layout):
    q = _heads_major(ex.q, layout)
    B, H, T, K = q.shape
    return (f"drawn: B={B} H={H} T={T} K={K} V={ex.v.shape[-1]} gates {ex.gate_strength:g} "
            f"scale {ex.scale:.3g}" + "".join(f" +{n}" for n in ("initial_state", "do",
                                                                  "d_final_state")
                                              if getattr(ex, n) is not None))


def judge(forward, backward=None, *, dtype, layout="BHTK", chunk_size=64, dg_identity=False,
          cu_seqlens=False, resets=True, golden=True, examples=100, max_T=70):
    """Judge a GLA kernel in one call: the golden cases, then ``examples`` drawn inputs.

    ``forward(q, k, v, g, *, scale, initial_state) -> (o, final_state, ctx)`` (ctx optional,
    handed to backward; with ``cu_seqlens=True`` forward also gets ``cu_seqlens=``, an int64
    array, on the packed case) and ``backward(do, d_final_state, ctx) -> (dq, dk, dv, dg,
    d_initial_state)`` (None: the forward alone is judged). Arrays come in ``layout`` and in
    the dtype that ``dtype`` stores (float32 for "tf32"; for "bfloat16" float32 arrays holding
    bfloat16 values), states (B, H, K, V). Every input a case does not use is None: no initial
    state, no do, no d_final_state; an absent upstream gradient means zero, and a kernel's
    d_initial_state is not judged without an initial state. ``chunk_size``: the kernel's chunk
    length (1 for a loop over time, T for one cumulative sum over the sequence); ``resets``:
    the kernel takes log gates of -inf (the optional hard_resets case and drawn resets);
    ``dg_identity``: judge dg by the plain identity's terms (:func:`bound`).

    Every tensor of every case is compared; if any exceeds its bound, raises AssertionError
    with one table of every failing tensor of every case. Otherwise returns a :class:`Verdict`.
    The drawn examples need hypothesis (imported here when ``examples`` > 0).
    """
    from gla_np import golden as golden_cases  # golden imports gla_np.testing

    check_choice("layout", layout, LAYOUTS)
    name = _dtype_name(dtype)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    rows = []

    def check(case, inputs, cu=None):
        ref = reference(inputs["q"], inputs["k"], inputs["v"], inputs["g"],
                        initial_state=inputs.get("initial_state"), do=inputs.get("do"),
                        d_final_state=inputs.get("d_final_state"), scale=inputs["scale"],
                        layout=layout, cu_seqlens=cu, chunk_size=chunk_size)
        got = _call_kernel(forward, backward, inputs, cu)
        return _compare(case, got, ref, name, dg_identity)

    if golden:
        for case in golden_cases.CASES:
            if (case.cu_seqlens and not cu_seqlens) or (case.gates == "reset" and not resets):
                continue
            inputs = golden_cases.case_inputs(case, layout=layout, dtype=name)
            cu = np.array(case.cu_seqlens, dtype=np.int64) if case.cu_seqlens else None
            rows += check(case.name, inputs, cu)
    drawn, drawn_worst = [], [0.0]
    if examples:
        from hypothesis import HealthCheck, given, settings
        strategy = gla_examples(dtype=INPUT_DTYPES[name], layout=layout, max_T=max_T,
                                chunk_sizes=(chunk_size,), resets=resets)

        @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def sweep(ex):
            inputs = {n: getattr(ex, n) for n in ("q", "k", "v", "g", "initial_state", "do",
                                                  "d_final_state", "scale")}
            if name == "bfloat16":
                inputs = {n: golden_cases.round_to_bfloat16(x) if isinstance(x, np.ndarray)
                          else x for n, x in inputs.items()}
            drawn[:] = check(_describe_example(ex, layout), inputs)
            drawn_worst[0] = max([drawn_worst[0]] + [r["ratio"] for r in drawn])
            if any(r["ratio"] > 1 for r in drawn):
                raise AssertionError("over the bound")

        try:
            sweep()
            drawn = []  # passing examples are summarised by the golden rows' worst
        except AssertionError:
            pass  # hypothesis ran the shrunk example last: drawn holds its rows
    rows += drawn
    failures = [r for r in rows if r["ratio"] > 1]
    worst = max([r["ratio"] for r in rows] + drawn_worst)
    table = _table(failures)
    if failures:
        cases = len({r["case"] for r in failures})
        notes = [f"{len(failures)} tensors of {cases} cases exceed the error bound ({name}, "
                 f"chunk_size {chunk_size}, dg by the "
                 f"{'plain identity' if dg_identity else 'rule of chunked.md B5'}):", table]
        if drawn:
            notes.append("The drawn case is the example hypothesis shrank to: its ratio says "
                         "how far that small input lands from the bound, nothing about how "
                         "large the bug is on real inputs.")
        raise AssertionError("\n".join(notes))
    return Verdict(rows, failures, worst, table)
