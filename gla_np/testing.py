"""gla_np as the oracle for another GLA implementation: reference values, an error model, inputs.

For a kernel author (a Triton/CUDA/JAX GLA kernel, a port to a new backend), the whole test:

    from gla_np.testing import judge
    judge(my_forward, my_backward, dtype="float32", layout="BTHK", chunk_size=64)

or, tensor by tensor:

    ref = reference(q, k, v, g, initial_state=S0, do=do, d_final_state=dS_T, layout="BTHK")
    assert_close("dg", dg_mine, ref, dtype="float32")

* :func:`reference` runs gla_np in float64 whatever the caller's dtype and returns a
  :class:`Reference`: the output, the final state and all five gradients in the caller's layout,
  plus what the error model needs (each entry's magnitude, its step-weighted magnitudes, the
  log-gate span).
* :func:`assert_close` compares one tensor against it with the error model of
  docs/testing-your-kernel.md: entry by entry, ``|got - ref| <= bound``, where the bound grows
  with the entry's magnitude (the sum of the absolute values of the terms that make it), with
  the log-gate span of a chunk, and with the sequential steps each term went through (the
  kernel's chunk-to-chunk state passes, its decay window, the reference's own steps). On
  failure it raises :class:`BoundExceeded` (an AssertionError) naming the worst entry, with
  the ratio on it.
* :func:`judge` runs a kernel's forward and backward on the golden cases and on drawn inputs and
  reports every failing tensor of every case in one table.
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
from gla_np.recurrence._gla_inputs import check_gla_inputs

FORMS = {"recurrent": recurrent, "parallel": parallel, "chunk": chunked}
LAYOUTS = ("BHTK", "BTHK")
NAMES = ("o", "final_state", "dq", "dk", "dv", "dg", "d_initial_state")

# Unit roundoff η (half an ulp at 1) of the precision a kernel's products are formed in, and the
# dtype it accumulates and takes cumulative sums in. bf16 and fp16 kernels accumulate in
# float32; "tf32" is float32 storage whose matmul inputs are rounded to 10 explicit mantissa
# bits (so η = 2^-11, as float16's), accumulated in float32.
UNIT_ROUNDOFF = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "tf32": 2.0 ** -11,
                 "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
ACCUMULATES_IN = {"float64": "float64", "float32": "float32", "tf32": "float32",
                  "float16": "float32", "bfloat16": "float32"}
# The reference runs the recurrence in float64: this many float64 roundings per step it takes
# (exp of the gate, the product, the sum into the state: at most about 2, doubled).
REFERENCE_PER_STEP = 4.0


class ErrorModel(NamedTuple):
    """The constants of the bound (docs/testing-your-kernel.md derives it), with η the unit
    roundoff of the kernel's products, η_acc of its accumulation dtype, η_64 of float64:

        bound = (η n_round + η_acc n_span span) M  +  η_acc n_pass M_pass
                +  η_acc span (M_window - M_pass)  +  η_64 n_ref M_window  +  atol

    roundings (n_round): the roundings of size η one term may collect inside a chunk (inputs to
    matmuls, the matmul sums, the output store); per_log_gate (n_span): the relative error of a
    decay factor per unit of log-gate span, in units of η_acc (the cumulative sums of the log
    gates are rounded in the accumulation dtype); per_pass (n_pass): the roundings of η_acc a
    term collects at each chunk-to-chunk state pass it goes through (a recurrent kernel: at
    every step). M_pass weights each term of the magnitude M by its number of passes, M_window
    by its decay window's length (:class:`Reference`: ``passes``, ``window``): each step of the
    window that is no pass adds one rounding of a partial sum of log gates, at most η_acc span;
    the float64 reference takes n_ref = REFERENCE_PER_STEP roundings of η_64 at every step.
    """

    roundings: float
    per_log_gate: float
    per_pass: float
    atol: float


ERROR_MODELS = {
    "float64": ErrorModel(roundings=128.0, per_log_gate=16.0, per_pass=4.0, atol=1e-300),
    "float32": ErrorModel(roundings=128.0, per_log_gate=16.0, per_pass=4.0, atol=1e-37),
    "tf32": ErrorModel(roundings=8.0, per_log_gate=16.0, per_pass=4.0, atol=1e-37),
    "float16": ErrorModel(roundings=8.0, per_log_gate=16.0, per_pass=4.0, atol=1e-7),
    "bfloat16": ErrorModel(roundings=8.0, per_log_gate=16.0, per_pass=4.0, atol=1e-37),
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


class Magnitudes(NamedTuple):
    """Per entry of one tensor: the sum of |terms| that make it (M), that sum with each term
    weighted by the state passes between chunks its decay window crosses (M_pass: a chunk
    boundary of the kernel lies in the window), and weighted by its window's length, the steps
    the float64 reference takes (M_window)."""

    magnitude: np.ndarray
    passes: np.ndarray
    window: np.ndarray


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


def _sequences(segments, T):
    return segments or [slice(0, T)]


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


def _step_weighted(magnitudes, g, mags, where):
    """Each magnitude with every term weighted by how many of the rows marked in ``where`` its
    decay window holds: minus the derivative of the magnitudes as those rows' gates move
    together (a term scales by exp(-shift) once per marked row its window holds), by a difference
    quotient small enough that the second-order part is below 1e-4 of it."""
    if not where.any():
        return [None if a is None else np.zeros_like(a) for a in mags]
    shift = 1e-4 / float(where.sum())
    moved = magnitudes(g - shift * where[None, None, :, None])
    return [None if a is None else np.maximum((a - b) / shift, 0.0) for a, b in zip(mags, moved)]


def _callers_layout(tensors, names, layout):
    """Head-major tensors in the caller's layout (states are (B, H, K, V) in both)."""
    return [x if x is None or name in ("final_state", "d_initial_state") else
            np.ascontiguousarray(_heads_major(x, layout)) for name, x in zip(names, tensors)]


def _in_chunk_key_pairs(q_abs, k_abs, v_abs, g, do_abs, scale, segments, C):
    """The magnitude of the key-side pairs a B5 kernel adds and cancels at row r: for each r,
    the sum over pairs (t, u) of one chunk with r <= u < t of |its dg term|
    s |q_t| |k_u| exp(b_t - b_u) (|do_t| . |v_u|), i.e. sum over u >= r in the chunk of
    |k_u| * (the past-pair magnitude of dk_u). Such a pair's window (u, t] does not hold r, so it
    is no term of dg_r, but B5's two reverse sums over t >= r each hold it once (chunked.md, B5).
    (B, H, T, K); zero without do or with chunks of one row."""
    out = np.zeros_like(q_abs)
    if do_abs is None or C == 1:
        return out
    Bsz, H, T, K = q_abs.shape
    g = np.maximum(g, -1024.0)  # a reset: its decay is 0 either way, and -inf - -inf is nan
    for seq in _sequences(segments, T):
        n_rows = seq.stop - seq.start
        c = min(C, n_rows)
        N = -(-n_rows // c)
        pad = ((0, 0), (0, 0), (0, N * c - n_rows), (0, 0))

        def chunks(x):
            return np.pad(x[:, :, seq], pad).reshape(Bsz, H, N, c, x.shape[3])

        q, k, v, do, b = (chunks(x) for x in (q_abs, k_abs, v_abs, do_abs, g))
        b = np.cumsum(b, axis=3)  # (B, H, N, c, K), chunk-local
        past = np.tril(np.ones((c, c), dtype=bool), k=-1)[:, :, None]  # t > u, (c, c, 1)
        pairs = np.empty_like(q)
        # blocks of chunks, and of key rows u inside a chunk, of at most 2^22 pair entries
        per_chunk = Bsz * H * c * c * K
        step = max(1, 2 ** 22 // per_chunk)  # chunks per block
        keys = c if per_chunk <= 2 ** 22 else max(1, 2 ** 22 // (Bsz * H * c * K))
        for n in range(0, N, step):
            blk = slice(n, n + step)
            for u0 in range(0, c, keys):
                us = slice(u0, u0 + keys)
                log_w = np.where(past[:, us], b[:, :, blk, :, None, :] - b[:, :, blk, None, us, :],
                                 -np.inf)  # (B, H, n, t, u, K)
                x = scale * np.einsum("bhntv,bhnuv->bhntu", do[:, :, blk], v[:, :, blk, us])
                dk_past = np.einsum("bhntu,bhntuk,bhntk->bhnuk", x, np.exp(log_w),
                                    q[:, :, blk])
                pairs[:, :, blk, us] = k[:, :, blk, us] * dk_past
        rev = np.flip(np.cumsum(np.flip(pairs, 3), 3), 3)  # sum over u >= r in the chunk
        out[:, :, seq] = rev.reshape(Bsz, H, N * c, K)[:, :, :n_rows]
    return out


def _dg_identity_magnitude(q_abs, k_abs, dq_mag, dk_mag, S_T_mag, dS_T_abs, segments):
    """dg's magnitude for a kernel that uses the plain gate identity: its terms, which cancel in
    its reverse cumulative sum: sum over t' >= t of |q| M_dq + |k| M_dk, plus sum over V of
    M_ST |dS_T| (per sequence when the batch is packed). (B, H, T, K)."""
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
    for seg in _sequences(segments, x.shape[2]):
        out[:, :, seg] = np.flip(np.cumsum(np.flip(x[:, :, seg], 2), 2), 2)
    return out


def _dtype_name(dtype):
    name = dtype if isinstance(dtype, str) else getattr(np.dtype(dtype), "name", str(dtype))
    if name not in ERROR_MODELS:
        raise ValueError(f"dtype: expected one of {sorted(ERROR_MODELS)} (the precision the "
                         f"kernel computes in), got {dtype!r}")
    return name


def tolerance(dtype, log_gate_span=0.0):
    """The in-chunk part of the bound, ``(rtol, atol)``, for a kernel of ``dtype`` at this
    log-gate span: ``rtol = η n_round + η_acc n_span span``. The full bound adds the step
    terms (:func:`bound`)."""
    name = _dtype_name(dtype)
    model = ERROR_MODELS[name]
    if isinstance(log_gate_span, bool) or not isinstance(log_gate_span, numbers.Real) or \
            not log_gate_span >= 0:
        raise ValueError(f"log_gate_span: expected a number >= 0, got {log_gate_span!r}")
    eta, eta_acc = UNIT_ROUNDOFF[name], UNIT_ROUNDOFF[ACCUMULATES_IN[name]]
    return eta * model.roundings + eta_acc * model.per_log_gate * log_gate_span, model.atol


def per_step_tolerance(dtype, log_gate_span=0.0):
    """The step terms' coefficients ``(per pass, per window step, per reference step)``: the
    relative error a term collects at each chunk-to-chunk state pass of the kernel,
    ``η_acc n_pass``; at each other step of its decay window, from the cumulative sum of the
    log gates, ``η_acc span``; and at each step of the float64 reference, ``η_64 n_ref``."""
    name = _dtype_name(dtype)
    eta_acc = UNIT_ROUNDOFF[ACCUMULATES_IN[name]]
    return (eta_acc * ERROR_MODELS[name].per_pass, eta_acc * log_gate_span,
            UNIT_ROUNDOFF["float64"] * REFERENCE_PER_STEP)


def _step_terms(dtype, span, mags):
    """The length-dependent part of the bound, per entry."""
    per_pass, per_window_step, per_ref_step = per_step_tolerance(dtype, span)
    inside = np.maximum(mags.window - mags.passes, 0.0)  # window steps that are no pass
    return per_pass * mags.passes + per_window_step * inside + per_ref_step * mags.window


def _magnitudes_of(ref, name, dg_identity):
    if name == "dg" and dg_identity:
        return ref.dg_identity
    return Magnitudes(getattr(ref.magnitude, name), getattr(ref.passes, name),
                      getattr(ref.window, name))


def _span_for(ref, dtype):
    """The log-gate span for a kernel of this dtype: resets count as its floor."""
    return ref.log_gate_span_float64 if _dtype_name(dtype) == "float64" else ref.log_gate_span


def bound(name, ref, *, dtype, dg_identity=False):
    """The per-entry bound on |got - ref| for tensor ``name`` of a kernel computing in ``dtype``:

        (η n_round + η_acc n_span span) M  +  η_acc n_pass M_pass
        +  η_acc span (M_window - M_pass)  +  η_64 n_ref M_window  +  atol     (see ErrorModel)

    ``dg_identity=True`` judges dg by the terms of the plain gate identity (a kernel that
    computes dg as fla does: one reverse cumulative sum of q dq - k dk, self pairs included)."""
    check_choice("name", name, NAMES)
    if getattr(ref, name) is None:
        raise ValueError(f"ref: has no {name} (no upstream gradient, or no initial state)")
    mags = _magnitudes_of(ref, name, dg_identity)
    span = _span_for(ref, dtype)
    rtol, atol = tolerance(dtype, span)
    return rtol * mags.magnitude + _step_terms(dtype, span, mags) + atol


def dg_identity_loss(ref):
    """How much a plain-identity kernel can lose on dg at these inputs: the largest ratio of the
    identity's magnitude to dg's own (B5) magnitude over the entries. The identity's bound lets
    dg be off by up to ``rtol * dg_identity_loss(ref)`` relative to the size of dg's own terms."""
    if ref.dg is None:
        raise ValueError("ref: has no dg (no upstream gradient)")
    own, ident = ref.magnitude.dg, ref.dg_identity.magnitude
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(own > 0, ident / own, np.where(ident > 0, np.inf, 1.0))
    return float(ratio.max()) if ratio.size else 1.0


class BoundExceeded(AssertionError):
    """:func:`assert_close`'s failure, with what it found: ``name``, ``ratio`` (the worst
    |error| / bound), ``index`` of that entry, ``got``, ``want``, ``error``, ``bound``,
    ``magnitude`` there, and ``failed`` of ``size`` entries over their bound."""

    def __init__(self, message, **found):
        super().__init__(message)
        self.__dict__.update(found)


def _worst(name, got, want, bound_, mag):
    """The comparison of one tensor: a dict of what the worst entry is, or raise on nan/shape."""
    got64 = np.asarray(got, dtype=np.float64)
    if got64.shape != want.shape:
        raise AssertionError(f"{name}: shape {got64.shape}, expected {want.shape}")
    err = np.abs(got64 - want)
    err = np.where(np.isfinite(got64), err, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = err / bound_
    if not ratio.size:
        return dict(name=name, ratio=0.0, failed=0, size=0, index=(), got=0.0, want=0.0,
                    error=0.0, bound=0.0, magnitude=0.0)
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(ratio)), ratio.shape))
    return dict(name=name, ratio=float(ratio[idx]), failed=int((ratio > 1).sum()),
                size=ratio.size, index=idx, got=float(got64[idx]), want=float(want[idx]),
                error=float(err[idx]), bound=float(bound_[idx]), magnitude=float(mag[idx]))


def _describe(w):
    """One line on a tensor's worst entry (a zero reference magnitude said as such)."""
    if not np.isfinite(w["got"]):
        size = f"got {w['got']!r} (nan or inf)"
    elif w["magnitude"] == 0:
        size = (f"got {w['got']!r}, reference {w['want']!r}: every term of this entry is 0 "
                f"(reference magnitude 0), so its bound is atol alone, {w['bound']:.1e}")
    else:
        size = (f"got {w['got']!r}, reference {w['want']!r}, |error| {w['error']:.3e} > bound "
                f"{w['bound']:.3e} (magnitude {w['magnitude']:.3e}; {w['ratio']:.3g} times "
                f"the bound)")
    return (f"{w['name']}: {w['failed']} of {w['size']} entries exceed the error bound; worst at "
            f"index {w['index']}: {size}")


def assert_close(name, got, ref, *, dtype, dg_identity=False, rtol=None, atol=None,
                 magnitude=None, log_gate_span=None):
    """Check one tensor of a kernel against the reference; return the worst |error| / bound.

    ``name`` is one of o, final_state, dq, dk, dv, dg, d_initial_state; ``ref`` a
    :class:`Reference` (or a plain float64 array, then ``magnitude`` and ``log_gate_span`` must
    be given, and the step terms are left out); ``dtype`` the precision the kernel computes in
    (float64, float32, "tf32", float16 or "bfloat16"). Passes when every entry has
    |got - ref| <= :func:`bound`; ``rtol`` and ``atol`` replace the in-chunk part
    ``rtol * M + atol``. ``dg_identity=True``: see :func:`bound`. Raises :class:`BoundExceeded`
    naming the worst entry (the largest |error| / bound), its index, both values, the bound and
    the ratio (also on the exception, ``.ratio``), and how many entries failed; a nan or inf
    in ``got`` fails there.
    """
    check_choice("name", name, NAMES)
    if isinstance(ref, Reference):
        want = getattr(ref, name)
        if want is None:
            raise ValueError(f"ref: has no {name} (no upstream gradient, or no initial state)")
        mags = _magnitudes_of(ref, name, dg_identity)
        span = _span_for(ref, dtype) if log_gate_span is None else log_gate_span
        mag = mags.magnitude
        model_rtol, model_atol = tolerance(dtype, span)
        extra = _step_terms(dtype, span, mags)
    else:
        if magnitude is None or log_gate_span is None:
            raise ValueError("magnitude: with a plain array as ref, give magnitude= and "
                             "log_gate_span= (or pass the Reference from reference())")
        want, mag = np.asarray(ref, dtype=np.float64), np.asarray(magnitude, dtype=np.float64)
        model_rtol, model_atol = tolerance(dtype, log_gate_span)
        extra = 0.0
    rtol = model_rtol if rtol is None else rtol
    atol = model_atol if atol is None else atol
    w = _worst(name, got, want, rtol * mag + extra + atol, mag)
    if w["ratio"] > 1.0:
        raise BoundExceeded(_describe(w), **w)
    return w["ratio"]


def assert_all_close(got, ref, *, dtype, **options):
    """:func:`assert_close` on every tensor the reference has and ``got`` gives (a dict, or a
    Tensors/tuple in NAMES order; None entries are skipped), all of them before failing: the
    AssertionError lists every failing tensor. Return the worst ratio seen."""
    items = got.items() if isinstance(got, dict) else zip(NAMES, got)
    worst, failures = 0.0, []
    for name, x in items:
        if x is not None and getattr(ref, name) is not None:
            try:
                worst = max(worst, assert_close(name, x, ref, dtype=dtype, **options))
            except AssertionError as err:
                failures.append(str(err))
    if failures:
        raise AssertionError("\n".join(failures))
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
    scale: float  # the query scale to use: K ** -0.5 or a drawn other value


def _hypothesis():
    try:
        import hypothesis.strategies as st
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("gla_np.testing needs hypothesis for drawn examples, a test-only "
                          "dependency of gla_np: pip install hypothesis (or gla-np[test])") from err
    return st


def gla_examples(*, dtype=np.float32, layout="BHTK", max_T=70, max_width=6,
                 strengths=(0.0, 1e-3, 0.1, 1.0, 5.0, 30.0), chunk_sizes=(16, 32, 64),
                 resets=False):
    """A hypothesis strategy drawing :class:`GLAExample` inputs for a GLA kernel.

    Shapes: B, H in 1..2; K, V in 1..max_width (K = 1 included); T in 1..max_T: up to 70 a third
    of the time, just off a multiple of one of ``chunk_sizes`` a third (a ragged last chunk),
    anywhere up to ``max_T`` the rest; with ``max_T`` > 70 a quarter of the draws are long
    instead (``max_T`` / 4 to ``max_T``, and ``max_T`` itself). Gates: per-step strength from ``strengths`` (0 is no
    decay at all), every entry at -strength or uniform in [-strength, 0]; with ``resets`` some
    draws put -inf (a hard reset) at a few steps. Values: standard normal, or a cancelling
    variant where v repeats with alternating sign, so that outputs sum to little. The scale:
    K ** -0.5 or another value (1 or 0.3). Initial state, do and d_final_state each on or off
    (not both upstream gradients off). Needs hypothesis, imported on call.
    """
    st = _hypothesis()
    check_choice("layout", layout, LAYOUTS)
    np_dtype = np.dtype(dtype)

    @st.composite
    def draw_example(draw):
        B, H = draw(st.integers(1, 2)), draw(st.integers(1, 2))
        K, V = draw(st.integers(1, max_width)), draw(st.integers(1, max_width))
        C = draw(st.sampled_from(chunk_sizes))
        near = [t for t in (C - 1, C + 1, 2 * C - 1, 2 * C + 1) if 1 <= t <= max_T] or [1]
        lengths = [st.integers(1, min(max_T, 70)), st.sampled_from(near), st.integers(1, max_T)]
        if max_T > 70:  # training lengths: a quarter of the draws from max_T / 4 up, max_T too
            lengths.append(st.one_of(st.just(max_T), st.integers(max_T // 4, max_T)))
        T = draw(st.one_of(*lengths))
        strength = draw(st.sampled_from(strengths))
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
        q, k = rng.standard_normal((2, B, H, T, K))
        v = rng.standard_normal((B, H, T, V))
        if draw(st.booleans()):  # cancelling values: v_t = (-1)^t v_0, k shared
            v = v[:, :, :1] * (-1.0) ** np.arange(T)[None, None, :, None]
            k = np.broadcast_to(k[:, :, :1], k.shape).copy()
        u = np.ones((B, H, T, K)) if draw(st.booleans()) else rng.uniform(0, 1, (B, H, T, K))
        g = -strength * u
        if resets and draw(st.booleans()):
            g[:, :, rng.integers(0, T, 1 + T // 16)] = -np.inf  # every channel forgets there
            g[rng.random(g.shape) < 0.02] = -np.inf  # and single channels here and there
        scale = draw(st.sampled_from([K ** -0.5, 1.0, 0.3]))
        S0 = rng.standard_normal((B, H, K, V)) if draw(st.booleans()) else None
        with_do, with_dS = draw(st.sampled_from([(True, True), (True, False), (False, True)]))
        do = rng.standard_normal((B, H, T, V)) if with_do else None
        dS_T = rng.standard_normal((B, H, K, V)) if with_dS else None
        cast = [None if x is None else x.astype(np_dtype) for x in (q, k, v, g, S0, do, dS_T)]
        for i in (0, 1, 2, 3, 5):
            cast[i] = None if cast[i] is None else np.ascontiguousarray(
                _heads_major(cast[i], layout))
        return GLAExample(*cast, gate_strength=float(strength), scale=float(scale))

    return draw_example()


# --- one call to judge a kernel -----------------------------------------------------------

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
    from gla_np import golden as golden_cases  # golden imports this module

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
