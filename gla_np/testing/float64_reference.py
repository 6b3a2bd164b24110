"""The float64 reference: a GLA kernel's seven tensors computed by gla_np, and their magnitudes.

:func:`reference` casts the caller's inputs to float64, runs one of gla_np's forms (the
recurrence by default, the definition), and returns a :class:`Reference`: the output, the final
state and the five gradients in the caller's layout (``"BHTK"``, gla_np's, or ``"BTHK"``,
fla's), plus what the error model needs (the magnitudes of :mod:`gla_np.testing.magnitudes`
and the log-gate span of :func:`log_gate_span`). fla's packed batches (``cu_seqlens``) run
sequence by sequence.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gla_np._checks import check_choice, check_positive_int
from gla_np.recurrence import chunked, parallel, recurrent
from gla_np.recurrence._gla_inputs import check_gla_inputs
from gla_np.testing.magnitudes import (Magnitudes, _dg_identity_magnitude, _in_chunk_key_pairs,
                                       _sequences, _step_weighted)

FORMS = {"recurrent": recurrent, "parallel": parallel, "chunk": chunked}
LAYOUTS = ("BHTK", "BTHK")
NAMES = ("o", "final_state", "dq", "dk", "dv", "dg", "d_initial_state")


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
    magnitude: Tensors  # per entry, the sum of |terms| that make it (dg: see dg_identity)
    passes: Tensors  # M_pass: the same sums, each term times the chunk boundaries it crosses
    window: Tensors  # M_window: the same sums, each term times its decay window's length
    dg_identity: Magnitudes | None  # dg's magnitudes for a kernel that uses the plain identity
    log_gate_span: float  # the largest |sum of log gates| over one chunk of chunk_size steps
    log_gate_span_float64: float  # the same with a reset counted as 1024 (float64's floor)
    chunk_size: int  # the chunk length the span and the passes were measured for
    scale: float  # the query scale used


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
    """The offsets as a list of slices along T; any integer sequence (list, tuple, array)."""
    cu = None if isinstance(cu_seqlens, (str, bytes)) else np.asarray(cu_seqlens)
    if cu is None or cu.ndim != 1 or cu.dtype.kind not in "iu" or len(cu) < 2:
        raise ValueError(f"cu_seqlens: expected a 1-D integer sequence [0, t_1, ..., T] of "
                         f"N + 1 offsets, got {cu_seqlens!r}")
    if cu[0] != 0 or cu[-1] != T or (np.diff(cu) < 1).any():
        raise ValueError(f"cu_seqlens: expected offsets rising strictly from 0 to T={T}, got "
                         f"{cu.tolist()}")
    if B != 1:
        raise ValueError(f"cu_seqlens: expected a batch of 1 with the sequences packed along T "
                         f"(fla's convention), got B={B}")
    N = len(cu) - 1
    if initial_state is not None and initial_state.shape[0] != N:
        raise ValueError(f"initial_state: expected one state per sequence, ({N}, H, K, V) for "
                         f"{N} sequences, got {initial_state.shape}")
    return [slice(int(a), int(b)) for a, b in zip(cu[:-1], cu[1:])]


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


def log_gate_span(g, chunk_size=64, *, layout="BHTK", cu_seqlens=None, floor=128.0):
    """The largest |sum of log gates| over one chunk: chunks of ``chunk_size`` steps from the
    start of each sequence, as a chunked kernel cuts them (pass T for a kernel that takes one
    cumulative sum over the whole sequence). Gates below -floor count as -floor: a kernel that
    handles hard resets floors them near there (exp of anything below -104 is 0 in float32,
    below -745 in float64; gla_np floors at -128 and -1024)."""
    g = np.minimum(-np.asarray(_heads_major(g, layout), dtype=np.float64), floor)  # |g|
    T = g.shape[2]
    segments = None if cu_seqlens is None else _check_cu_seqlens(cu_seqlens, 1, T, None)
    span = 0.0
    for seq in _sequences(segments, T):
        for c in range(seq.start, seq.stop, chunk_size):
            span = max(span, float(g[:, :, c:min(c + chunk_size, seq.stop)].sum(axis=2).max()))
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
    variable-length batch (any 1-D integer sequence): B must be 1, the N sequences lie along T
    at offsets ``[0, t_1, ..., T]``, the state starts afresh at each, and initial_state,
    d_final_state and the final state are ``(N, H, K, V)``, one per sequence. ``chunk_size`` is
    the caller's kernel's chunk length (1 for a kernel that steps through time, T for one that
    takes one cumulative sum over the whole sequence); it changes no value, only the error
    model's inputs: the log-gate span, the passes between chunks, and which of dg's terms a
    kernel following docs/derivations/recurrence/chunked.md B5 adds up.
    """
    check_choice("layout", layout, LAYOUTS)
    check_choice("form", form, tuple(FORMS))
    chunk_size = check_positive_int("chunk_size", chunk_size)
    arrays = {name: _as_float64(name, x, allow_minus_inf=(name == "g")) for name, x in
              dict(q=q, k=k, v=v, g=g, initial_state=initial_state, do=do,
                   d_final_state=d_final_state).items()}
    q, k, v, g, S0, do, dS_T = arrays.values()
    if cu_seqlens is None:
        _, _, _, _, _, scale = check_gla_inputs(q, k, v, g, S0, scale, layout=layout)
    else:
        # the states are per sequence, (N, H, K, V): check the sequence arrays on their own
        _, _, _, _, _, scale = check_gla_inputs(q, k, v, g, None, scale, layout=layout)
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

    def run(module, options, *args):
        if segments is None:
            return _run(module, *args, scale, options)
        return _run_packed(module, segments, *args, scale, options)

    values = run(module, options, q, k, v, g, S0, do, dS_T)
    absolute = [None if x is None else np.abs(x) for x in (q, k, v, S0, do, dS_T)]

    def magnitudes(gates):
        """Every coefficient is positive, so the recurrence on |inputs| sums |terms|, entry by
        entry; its dg is the direct formula's, a sum of positive terms too. Eight arrays: the
        seven tensors (dg by the rule for B5 kernels) and dg's plain-identity magnitude."""
        a_q, a_k, a_v, a_S0, a_do, a_dS_T = absolute
        mags = run(recurrent, {}, a_q, a_k, a_v, gates, a_S0, a_do, a_dS_T)
        identity = None
        if mags[5] is not None:
            identity = _dg_identity_magnitude(a_q, a_k, mags[2], mags[3], mags[1], a_dS_T,
                                              segments)
            # a B5 kernel adds each key-side pair inside a chunk at or after the row twice
            # more (once with each sign): see _in_chunk_key_pairs
            mags[5] = mags[5] + 2 * _in_chunk_key_pairs(a_q, a_k, a_v, gates, a_do, scale,
                                                        segments, chunk_size)
        return mags + [identity]

    mags = magnitudes(g)
    starts = np.zeros(T)  # the rows that begin a chunk (after the first of each sequence)
    for seq in _sequences(segments, T):
        starts[seq.start + chunk_size:seq.stop:chunk_size] = 1.0
    every = np.ones(T)
    window = _step_weighted(magnitudes, g, mags, every)
    passes = window if chunk_size == 1 else _step_weighted(magnitudes, g, mags, starts)
    identity = None
    if mags[7] is not None:
        identity = Magnitudes(*_callers_layout([mags[7], passes[7], window[7]],
                                               ("dg",) * 3, layout))
    return Reference(*_callers_layout(values, NAMES, layout),
                     magnitude=Tensors(*_callers_layout(mags[:7], NAMES, layout)),
                     passes=Tensors(*_callers_layout(passes[:7], NAMES, layout)),
                     window=Tensors(*_callers_layout(window[:7], NAMES, layout)),
                     dg_identity=identity,
                     log_gate_span=log_gate_span(g, chunk_size, cu_seqlens=cu_seqlens),
                     log_gate_span_float64=log_gate_span(g, chunk_size, cu_seqlens=cu_seqlens,
                                                         floor=1024.0),
                     chunk_size=chunk_size, scale=float(scale))


def _callers_layout(tensors, names, layout):
    """Head-major tensors in the caller's layout (states are (B, H, K, V) in both)."""
    return [x if x is None or name in ("final_state", "d_initial_state") else
            np.ascontiguousarray(_heads_major(x, layout)) for name, x in zip(names, tensors)]
