"""gla_np as the oracle for another GLA implementation: reference values, an error model, inputs.

For a kernel author (a Triton/CUDA/JAX GLA kernel, a port to a new backend):

    ref = reference(q, k, v, g, initial_state=S0, do=do, d_final_state=dS_T, layout="BTHK")
    assert_close("o", o_mine, ref, dtype="float32")
    assert_close("dg", dg_mine, ref, dtype="float32")

* :func:`reference` runs gla_np in float64 whatever the caller's dtype and returns a
  :class:`Reference`: the output, the final state and all five gradients in the caller's layout,
  plus what the error model needs (each entry's magnitude and the log-gate span).
* :func:`assert_close` compares one tensor against it with the error model of
  docs/testing-your-kernel.md: entry by entry, ``|got - ref| <= rtol * magnitude + atol``, where
  the magnitude of an entry is the sum of the absolute values of the terms that make it (so a
  tensor that cancels to 0 is judged by the size of what cancelled), dg's magnitude is that of
  the gate identity's reverse cumulative sum (the sums a kernel actually adds up), and rtol grows
  with the log-gate span (chunk size times gate strength). On failure it names the worst entry,
  its index, both values and the bound.
* :func:`gla_examples` is a hypothesis strategy for GLA inputs (hypothesis is a test-only
  dependency, imported when the function is called).

``python -m gla_np.golden`` writes a file of fixed cases for tests outside Python.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from gla_np._checks import check_choice, check_positive_int
from gla_np.recurrence import chunked, parallel, recurrent
from gla_np.recurrence._gla_inputs import LOG_GATE_FLOOR, check_gla_inputs

FORMS = {"recurrent": recurrent, "parallel": parallel, "chunk": chunked}
LAYOUTS = ("BHTK", "BTHK")
NAMES = ("o", "final_state", "dq", "dk", "dv", "dg", "d_initial_state")

# Unit roundoff u (half an ulp at 1) per storage dtype, and the dtype a kernel of that storage
# type accumulates in (bf16 and fp16 kernels accumulate and take cumulative sums in float32).
UNIT_ROUNDOFF = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "float16": 2.0 ** -11,
                 "bfloat16": 2.0 ** -8}
ACCUMULATES_IN = {"float64": "float64", "float32": "float32", "float16": "float32",
                  "bfloat16": "float32"}


class ErrorModel(NamedTuple):
    """rtol = u_store * roundings + u_acc * per_log_gate * span;  bound = rtol * magnitude + atol.

    roundings: how many roundings of size u (of the storage dtype) one term may collect (inputs
    to matmuls, the matmul accumulations, the output store); per_log_gate: the relative error of
    a decay factor per unit of log-gate span, in units of u of the accumulation dtype (the
    cumulative sums of the log gates are rounded in that dtype). docs/testing-your-kernel.md
    derives both and says how they were measured.
    """

    roundings: float
    per_log_gate: float
    atol: float


ERROR_MODELS = {
    "float64": ErrorModel(roundings=128.0, per_log_gate=16.0, atol=1e-300),
    "float32": ErrorModel(roundings=128.0, per_log_gate=16.0, atol=1e-37),
    "float16": ErrorModel(roundings=8.0, per_log_gate=16.0, atol=1e-7),
    "bfloat16": ErrorModel(roundings=8.0, per_log_gate=16.0, atol=1e-37),
}


class Tensors(NamedTuple):
    """The seven tensors a GLA forward and backward produce, by name."""

    o: np.ndarray  # (B, H, T, V) or (B, T, H, V), the caller's layout
    final_state: np.ndarray  # (B, H, K, V); (N, H, K, V) with cu_seqlens
    dq: np.ndarray | None  # like q; None when no upstream gradient was given
    dk: np.ndarray | None  # like k
    dv: np.ndarray | None  # like v
    dg: np.ndarray | None  # like g
    d_initial_state: np.ndarray | None  # like initial_state; None without one


class Reference(NamedTuple):
    """What :func:`reference` returns: float64 values, the caller's layout, and the error model's
    inputs. Fields o .. d_initial_state as in :class:`Tensors`."""

    o: np.ndarray
    final_state: np.ndarray
    dq: np.ndarray | None
    dk: np.ndarray | None
    dv: np.ndarray | None
    dg: np.ndarray | None
    d_initial_state: np.ndarray | None
    magnitude: Tensors  # per entry, the sum of |terms| that make it (dg: the identity's sums)
    log_gate_span: float  # the largest |sum of log gates| over one chunk of chunk_size steps
    chunk_size: int  # the chunk length the span was measured for


def _as_float64(name, x, allow_minus_inf=False):
    """The caller's array (any float dtype: float16/32/64, bfloat16 via ml_dtypes) in float64."""
    if x is None:
        return None
    dtype = getattr(x, "dtype", None)
    if not isinstance(x, np.ndarray) or not (dtype.kind == "f" or dtype.name == "bfloat16"):
        raise ValueError(f"{name}: expected a NumPy array of floats, got "
                         f"{type(x).__name__ if dtype is None else dtype}")
    x64 = np.asarray(x, dtype=np.float64)
    bad = ~np.isfinite(x64)
    if allow_minus_inf:
        bad &= ~np.isneginf(x64)
    if bad.any():
        raise ValueError(f"{name}: contains nan or inf (only a log gate may be -inf)")
    return x64


def _heads_major(x, layout):
    return x if x is None or layout == "BHTK" else np.swapaxes(x, 1, 2)


def _check_cu_seqlens(cu_seqlens, B, T, initial_state):
    if not isinstance(cu_seqlens, np.ndarray) or cu_seqlens.ndim != 1 or \
            cu_seqlens.dtype.kind not in "iu" or len(cu_seqlens) < 2:
        raise ValueError(f"cu_seqlens: expected a 1-D integer array [0, t_1, ..., T] of N + 1 "
                         f"offsets, got {cu_seqlens!r}")
    if cu_seqlens[0] != 0 or cu_seqlens[-1] != T or (np.diff(cu_seqlens) < 1).any():
        raise ValueError(f"cu_seqlens: expected offsets rising strictly from 0 to T={T}, got "
                         f"{cu_seqlens.tolist()}")
    if B != 1:
        raise ValueError(f"cu_seqlens: expected a batch of 1 with the sequences packed along T "
                         f"(fla's convention), got B={B}")
    N = len(cu_seqlens) - 1
    if initial_state is not None and initial_state.shape[0] != N:
        raise ValueError(f"initial_state: expected one state per sequence, ({N}, H, K, V) for "
                         f"{N} sequences, got {initial_state.shape}")
    return [slice(int(a), int(b)) for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:])]


def _run(module, q, k, v, g, S0, do, dS_T, scale, options):
    """One head-major float64 sequence batch through a form: the seven tensors."""
    o, S_T, cache = module.forward(q, k, v, g, scale=scale, initial_state=S0, **options)
    if do is None and dS_T is None:
        return [o, S_T, None, None, None, None, None]
    return [o, S_T, *module.backward(do, dS_T, cache)]


def _run_packed(module, segments, q, k, v, g, S0, do, dS_T, scale, options):
    """Each sequence of a packed batch on its own (state reset at each boundary), joined again."""
    parts = []
    for n, seg in enumerate(segments):
        along_t = [None if x is None else x[:, :, seg] for x in (q, k, v, g, do)]
        states = [None if x is None else x[n:n + 1] for x in (S0, dS_T)]  # sequence n's
        parts.append(_run(module, *along_t[:4], states[0], along_t[4], states[1], scale,
                          options))
    joined = []
    for i, name in enumerate(NAMES):
        pieces = [p[i] for p in parts]
        if pieces[0] is None:
            joined.append(None)
        elif name in ("final_state", "d_initial_state"):
            joined.append(np.concatenate(pieces, axis=0))  # (N, H, K, V)
        else:
            joined.append(np.concatenate(pieces, axis=2))  # along T
    return joined


def log_gate_span(g, chunk_size=64, *, layout="BHTK", cu_seqlens=None):
    """The largest |sum of log gates| over one chunk: chunks of ``chunk_size`` steps from the
    start of each sequence, as a chunked kernel cuts them (pass T for a kernel that takes one
    cumulative sum over the whole sequence). Gates below -128 count as -128: a kernel that
    handles hard resets floors them near there (exp of anything below -104 is 0 in float32)."""
    g = np.minimum(-np.asarray(_heads_major(g, layout), dtype=np.float64), 128.0)  # |g|
    T = g.shape[2]
    starts = [0] if cu_seqlens is None else [int(t) for t in cu_seqlens[:-1]]
    ends = [T] if cu_seqlens is None else [int(t) for t in cu_seqlens[1:]]
    span = 0.0
    for a, b in zip(starts, ends):
        for c in range(a, b, chunk_size):
            span = max(span, float(g[:, :, c:min(c + chunk_size, b)].sum(axis=2).max()))
    return span


def reference(q, k, v, g, *, initial_state=None, do=None, d_final_state=None, scale=None,
              layout="BHTK", form="recurrent", cu_seqlens=None, chunk_size=64):
    """The float64 reference for a GLA kernel's forward and backward: a :class:`Reference`.

    q, k, g ``(B, H, T, K)`` and v ``(B, H, T, V)`` with ``layout="BHTK"`` (gla_np's), or
    ``(B, T, H, K)`` and ``(B, T, H, V)`` with ``layout="BTHK"`` (fla's); any float dtype
    (float16, float32, float64, bfloat16 through ml_dtypes): each is cast to float64 and the
    results are float64, in the caller's layout. initial_state and d_final_state ``(B, H, K, V)``
    (or None); do like v (or None). With neither do nor d_final_state the gradients are None.
    scale defaults to K ** -0.5 and multiplies q. g may hold -inf (a hard reset).

    ``form`` picks the gla_np form that computes the values (the default, the recurrence itself,
    is the definition; all three agree to float64 rounding). ``cu_seqlens``, fla's packed
    variable-length batch: B must be 1, the N sequences lie along T at offsets
    ``cu_seqlens = [0, t_1, ..., T]``, the state starts afresh at each, and initial_state,
    d_final_state and the final state are ``(N, H, K, V)``, one per sequence. ``chunk_size`` is
    the caller's kernel's chunk length; it only sets ``log_gate_span`` for the error model.
    """
    check_choice("layout", layout, LAYOUTS)
    check_choice("form", form, tuple(FORMS))
    chunk_size = check_positive_int("chunk_size", chunk_size)
    arrays = {name: _as_float64(name, x, allow_minus_inf=(name == "g")) for name, x in
              dict(q=q, k=k, v=v, g=g, initial_state=initial_state, do=do,
                   d_final_state=d_final_state).items()}
    q, k, v, g, S0, do, dS_T = arrays.values()
    if cu_seqlens is None:
        check_gla_inputs(q, k, v, g, S0, scale, layout=layout)
    else:
        # the states are per sequence, (N, H, K, V): check the sequence arrays on their own
        check_gla_inputs(q, k, v, g, None, scale, layout=layout)
    q, k, v, g, do = (_heads_major(x, layout) for x in (q, k, v, g, do))
    B, H, T, K = q.shape
    V = v.shape[3]
    N = B
    segments = None
    if cu_seqlens is not None:
        segments = _check_cu_seqlens(cu_seqlens, B, T, S0)
        N = len(segments)
    for name, x, shape in [("do", do, (B, H, T, V)), ("d_final_state", dS_T, (N, H, K, V)),
                           ("initial_state", S0, (N, H, K, V))]:
        if x is not None and x.shape != shape:
            want = shape if name != "do" else _heads_major(np.empty(shape), layout).shape
            got = x.shape if name != "do" else _heads_major(x, layout).shape
            raise ValueError(f"{name}: expected shape {want}, got {got}")
    module, options = FORMS[form], dict(chunk_size=chunk_size) if form == "chunk" else {}

    def run(*args):
        if segments is None:
            return _run(module, *args, scale, options)
        return _run_packed(module, segments, *args, scale, options)

    values = run(q, k, v, g, S0, do, dS_T)
    # the magnitudes: every coefficient is positive, so the same map on absolute values sums
    # the absolute values of the terms, entry by entry
    mags = run(*(None if x is None else np.abs(x) for x in (q, k, v)), g,
               *(None if x is None else np.abs(x) for x in (S0, do, dS_T)))
    if mags[5] is not None:
        mags[5] = _dg_magnitude(np.abs(q), np.abs(k), mags[2], mags[3], mags[1],
                                None if dS_T is None else np.abs(dS_T), segments)
    return Reference(*_callers_layout(values, layout),
                     magnitude=Tensors(*_callers_layout(mags, layout)),
                     log_gate_span=log_gate_span(g, chunk_size, cu_seqlens=cu_seqlens),
                     chunk_size=chunk_size)


def _callers_layout(tensors, layout):
    """The seven head-major tensors in the caller's layout (states are (B, H, K, V) in both)."""
    return [x if x is None or name in ("final_state", "d_initial_state") else
            np.ascontiguousarray(_heads_major(x, layout)) for name, x in zip(NAMES, tensors)]


def _dg_magnitude(q_abs, k_abs, dq_mag, dk_mag, S_T_mag, dS_T_abs, segments):
    """dg's own rule: the magnitude of the gate identity's terms, which cancel in its reverse
    cumulative sum: sum over t' >= t of |q| M_dq + |k| M_dk, plus sum over V of M_ST |dS_T|
    (per sequence when the batch is packed). All (B, H, T, K) but the states (N, H, K, V)."""
    M = _reverse_cumsum_per_sequence(q_abs * dq_mag + k_abs * dk_mag, segments)
    if dS_T_abs is not None:
        carried = np.einsum("nhkv,nhkv->nhk", S_T_mag, dS_T_abs)  # (N, H, K)
        if segments is None:
            M += carried[:, :, None, :]  # every t of the sequence
        else:
            for n, seg in enumerate(segments):
                M[:, :, seg] += carried[n][None, :, None, :]  # the t of sequence n
    return M


def _reverse_cumsum_per_sequence(x, segments):
    """Inclusive reverse cumulative sum along T (axis 2), restarted at each sequence boundary."""
    out = np.empty_like(x)
    for seg in segments or [slice(0, x.shape[2])]:
        out[:, :, seg] = np.flip(np.cumsum(np.flip(x[:, :, seg], 2), 2), 2)
    return out


def _dtype_name(dtype):
    name = dtype if isinstance(dtype, str) else getattr(np.dtype(dtype), "name", str(dtype))
    if name not in ERROR_MODELS:
        raise ValueError(f"dtype: expected one of {sorted(ERROR_MODELS)} (the kernel's storage "
                         f"dtype), got {dtype!r}")
    return name


def tolerance(dtype, log_gate_span=0.0):
    """The error model's ``(rtol, atol)`` for a kernel storing ``dtype`` at this log-gate span."""
    name = _dtype_name(dtype)
    model = ERROR_MODELS[name]
    if isinstance(log_gate_span, bool) or not isinstance(log_gate_span, numbers.Real) or \
            not log_gate_span >= 0:
        raise ValueError(f"log_gate_span: expected a number >= 0, got {log_gate_span!r}")
    u_store, u_acc = UNIT_ROUNDOFF[name], UNIT_ROUNDOFF[ACCUMULATES_IN[name]]
    return u_store * model.roundings + u_acc * model.per_log_gate * log_gate_span, model.atol


def assert_close(name, got, ref, *, dtype, rtol=None, atol=None, magnitude=None,
                 log_gate_span=None):
    """Check one tensor of a kernel against the reference; return the worst |error| / bound.

    ``name`` is one of o, final_state, dq, dk, dv, dg, d_initial_state; ``ref`` a
    :class:`Reference` (or a plain float64 array, then ``magnitude`` and ``log_gate_span`` must
    be given); ``dtype`` the kernel's storage dtype (float64, float32, float16 or "bfloat16").
    Passes when every entry has |got - ref| <= rtol * magnitude + atol, with rtol and atol from
    :func:`tolerance` unless given. Raises AssertionError naming the worst entry (the largest
    |error| / bound), its index, both values and the bound, and how many entries failed. A nan
    or inf in ``got`` fails at its first index.
    """
    check_choice("name", name, NAMES)
    if isinstance(ref, Reference):
        want, mag = getattr(ref, name), getattr(ref.magnitude, name)
        span = ref.log_gate_span if log_gate_span is None else log_gate_span
        if want is None:
            raise ValueError(f"ref: has no {name} (no upstream gradient, or no initial state)")
    else:
        if magnitude is None or log_gate_span is None:
            raise ValueError("magnitude: with a plain array as ref, give magnitude= and "
                             "log_gate_span= (or pass the Reference from reference())")
        want, mag, span = np.asarray(ref, dtype=np.float64), np.asarray(magnitude), log_gate_span
    model_rtol, model_atol = tolerance(dtype, span)
    rtol = model_rtol if rtol is None else rtol
    atol = model_atol if atol is None else atol
    got64 = np.asarray(got, dtype=np.float64)
    if got64.shape != want.shape:
        raise AssertionError(f"{name}: shape {got64.shape}, expected {want.shape}")
    bad = ~np.isfinite(got64)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(f"{name}: {int(bad.sum())} of {bad.size} entries are nan or inf; "
                             f"first at index {idx}: got {float(got64[idx])!r}, reference "
                             f"{float(want[idx])!r}")
    err = np.abs(got64 - want)
    bound = rtol * mag + atol
    ratio = err / bound
    idx = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    worst = float(ratio[idx]) if ratio.size else 0.0
    if worst > 1.0:
        idx = tuple(int(i) for i in idx)
        raise AssertionError(
            f"{name}: {int((ratio > 1).sum())} of {ratio.size} entries exceed the error bound; "
            f"worst at index {idx}: got {float(got64[idx])!r}, reference {float(want[idx])!r}, "
            f"|error| "
            f"{err[idx]:.3e} > bound {bound[idx]:.3e} (rtol {rtol:.2e} * magnitude "
            f"{mag[idx]:.3e} + atol {atol:.1e}; {worst:.3g} times the bound)")
    return worst


def assert_all_close(got, ref, *, dtype, **options):
    """:func:`assert_close` on every tensor the reference has and ``got`` gives: ``got`` a dict
    or a Tensors/tuple in NAMES order (None entries are skipped). Return the worst ratio seen."""
    items = got.items() if isinstance(got, dict) else zip(NAMES, got)
    worst = 0.0
    for name, x in items:
        if x is not None and getattr(ref, name) is not None:
            worst = max(worst, assert_close(name, x, ref, dtype=dtype, **options))
    return worst


class GLAExample(NamedTuple):
    """One drawn input set (see :func:`gla_examples`), in the requested dtype and layout."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    g: np.ndarray
    initial_state: np.ndarray | None
    do: np.ndarray | None
    d_final_state: np.ndarray | None
    gate_strength: float  # the per-step |g| scale the gates were drawn with


def _hypothesis():
    try:
        import hypothesis.strategies as st
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("gla_np.testing.gla_examples needs hypothesis, a test-only dependency "
                          "of gla_np: pip install hypothesis (or gla-np[test])") from err
    return st


def gla_examples(*, dtype=np.float32, layout="BHTK", max_T=70, max_width=6,
                 strengths=(0.0, 1e-3, 0.1, 1.0, 5.0, 30.0), chunk_sizes=(16, 32, 64)):
    """A hypothesis strategy drawing :class:`GLAExample` inputs for a GLA kernel.

    Shapes: B, H in 1..2; K, V in 1..max_width (K = 1 included); T in 1..max_T, drawn half the
    time just off a multiple of one of ``chunk_sizes`` (a ragged last chunk). Gates: per-step
    strength from ``strengths`` (0 is no decay at all), every entry at -strength or uniform in
    [-strength, 0]. Values: standard normal, or a cancelling variant where v repeats with
    alternating sign, so that outputs sum to little. Initial state, do and d_final_state each
    on or off (not both upstream gradients off). Needs hypothesis, imported on call.
    """
    st = _hypothesis()
    check_choice("layout", layout, LAYOUTS)
    np_dtype = np.dtype(dtype)

    @st.composite
    def draw_example(draw):
        B, H = draw(st.integers(1, 2)), draw(st.integers(1, 2))
        K, V = draw(st.integers(1, max_width)), draw(st.integers(1, max_width))
        C = draw(st.sampled_from(chunk_sizes))
        T = draw(st.one_of(st.integers(1, max_T),
                           st.sampled_from([t for t in (C - 1, C + 1, 2 * C - 1, 2 * C + 1)
                                            if 1 <= t <= max_T] or [1])))
        strength = draw(st.sampled_from(strengths))
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
        q, k = rng.standard_normal((2, B, H, T, K))
        v = rng.standard_normal((B, H, T, V))
        if draw(st.booleans()):  # cancelling values: v_t = (-1)^t v_0, k shared
            v = v[:, :, :1] * (-1.0) ** np.arange(T)[None, None, :, None]
            k = np.broadcast_to(k[:, :, :1], k.shape).copy()
        u = np.ones((B, H, T, K)) if draw(st.booleans()) else rng.uniform(0, 1, (B, H, T, K))
        g = -strength * u
        S0 = rng.standard_normal((B, H, K, V)) if draw(st.booleans()) else None
        with_do, with_dS = draw(st.sampled_from([(True, True), (True, False), (False, True)]))
        do = rng.standard_normal((B, H, T, V)) if with_do else None
        dS_T = rng.standard_normal((B, H, K, V)) if with_dS else None
        cast = [None if x is None else x.astype(np_dtype) for x in (q, k, v, g, S0, do, dS_T)]
        for i in (0, 1, 2, 3, 5):
            cast[i] = None if cast[i] is None else np.ascontiguousarray(
                _heads_major(cast[i], layout))
        return GLAExample(*cast, gate_strength=float(strength))

    return draw_example()
