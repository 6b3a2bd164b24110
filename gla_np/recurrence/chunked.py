"""The chunkwise form: the paper's hardware-efficient algorithm (Yang et al. 2024, sec. 4.2-4.3).

What it adds over ``parallel``: memory and work linear in T, and matmuls instead of a (T, T, K)
tensor. Cut the sequence into N chunks of length C (the last may be shorter). With b the
chunk-local inclusive cumsum of the log gates, l_n = b at chunk n's last row, H_n the state
entering chunk n (H_0 = S_0) and s the query scale, each output is the sum of two parts:

    inter:  o_t  = s * H_n^T (q_t * exp(b_t))                                          (1)
    intra:  o_t += sum_{u < t in chunk n} A[t, u] v_u + s (q_t . k_t) v_t,
            A[t, u] = s * sum_i q_t[i] k_u[i] exp(b_t[i] - b_u[i])                     (2)
    state:  H_{n+1} = diag(exp l_n) H_n + sum_{u in chunk n} (k_u * exp(l_n - b_u)) v_u^T  (3)

(3) is a short Python loop over chunks; (1) and (2) are batched over all chunks at once. (2) is
computed by halving the chunk (the paper's secondary tiling, taken further; see
``_chunk_tiles``) so that every exponent evaluated is <= 0: the tempting factoring q * exp(b)
times k * exp(-b) overflows float32 inside a single chunk of 64 once the gates are strong.
Where a block's gates are mild enough for that factoring to be safe (a bound proved on the
page), the block is one masked matmul and is not halved further. The fast path: when a whole
chunk is such a block (a fresh layer's chunk of 64), that matmul also has the pairs u = t on
its diagonal for o and dv (the gate gradient keeps them apart), and the cache keeps its
pieces for the backward (``ChunkedCache``).
docs/derivations/recurrence/chunked.md has the full argument, and the recurrent form is the
reference.

Log gates are floored first (``_gla_inputs.floor_log_gates``): exact, since a gate below the
floor already has decay 0 in the dtype, and it bounds every |b| by C times the floor, so the
cumulative sums cannot overflow even for g = -inf or g = -3e38 (a hard reset).

Shapes are head-major: q, k, g ``(B, H, T, K)``; v, o ``(B, H, T, V)``; states ``(B, H, K, V)``.
Inside, chunked arrays are ``(B, H, N, C, K)``. ``forward`` and ``backward`` check their arguments
and run ``_forward_block`` / ``_backward_block`` on blocks of (batch, head) pairs, a cache measure
only (see ``BLOCK_ENTRIES``); the algorithm is in those two functions.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from gla_np._checks import check_bool, check_positive_int
from gla_np.recurrence import _chunk_tiles
from gla_np.recurrence._gla_inputs import (check_cache, check_gla_inputs, check_gla_upstream,
                                floor_log_gates)

# Chosen by measurement (benchmarks/forms.py, B=8 H=4 K=V=64 T=2048, chunk 64, float32): the
# chunk is halved until its diagonal tiles have at most c rows, whose pairs are then computed
# elementwise; tiles of 2 to 4 rows were fastest, see docs/derivations/recurrence/chunked.md.
DEFAULT_SUB_CHUNK_SIZE = 2

# A memory/cache measure, not part of the algorithm: (batch, head) pairs are independent, so
# forward and backward run on blocks of them, each with at most this many entries in each of
# the block's inputs (but at least one head). Whole-batch temporaries (16 MiB each at B=8,
# H=4, T=2048, K=64, float32) fall out of cache and are page-faulted in afresh by the
# allocator every time; per head (2^17 entries, 512 KiB in float32) they stay in cache. Any
# value gives the same result; docs/derivations/recurrence/chunked.md has the timings.
BLOCK_ENTRIES = 2 ** 17


def _to_chunks(x, C):
    """(B, H, T, X) -> (B, H, N, C, X), zero-padding T up to N * C.

    Zero padding is exact: a padded row has g = 0 (gate 1, so b and l are unchanged) and
    q = k = v = 0 (it writes and reads nothing).
    """
    B, H, T, X = x.shape
    N = -(-T // C)
    if N * C != T:
        x = np.pad(x, [(0, 0), (0, 0), (0, N * C - T), (0, 0)])
    return x.reshape(B, H, N, C, X)


def _from_chunks(x, T):
    """(B, H, N, C, X) -> (B, H, T, X), dropping the padding."""
    B, H, N, C, X = x.shape
    return x.reshape(B, H, N * C, X)[:, :, :T]


def _chunked_view(x, C):
    """x (B, H, T, X) as (B, H, N, C, X) without a copy, or None when T is not N * C or x is
    not C-contiguous: then a chunked result cannot be written into it in place."""
    B, H, T, X = x.shape
    if T % C or not x.flags.c_contiguous:
        return None
    return x.reshape(B, H, T // C, C, X)


def _chunk_decays(g, C, out=None):
    """Chunk-local inclusive cumsum b (B, H, N, C, K), written into ``out`` if given, and its
    last row l (B, H, N, K)."""
    b = _cumsum_rows(_to_chunks(g, C), out)
    return b, b[:, :, :, -1, :]


def _cumsum_rows(x, out=None):
    """np.cumsum(x, axis=-2), bitwise, by adding whole rows: b_t = b_{t-1} + g_t.

    NumPy's cumsum along an axis other than the last runs its inner loop once per column;
    measured 4 to 5 times slower than this loop of C row additions for (..., 64, 64) float32.
    The rows are added in a time-major copy, where each is one contiguous run (a third faster
    again than adding strided rows in place). Adding g_t <= 0 rounds to a value <= b_{t-1},
    so b never increases (the tiles rely on it). ``out``: an array like x to write b into.
    """
    time_major = np.moveaxis(x, -2, 0).copy()  # (C, ..., X), C order, never a view of x
    for t in range(1, len(time_major)):
        np.add(time_major[t - 1], time_major[t], out=time_major[t])
    if out is None:
        out = np.empty_like(x)
    np.copyto(out, np.moveaxis(time_major, 0, -2))
    return out


class ChunkedCache(NamedTuple):
    """What ``backward`` needs: the inputs (g as b) and the chunk-boundary states, nothing per step.

    Memory is O(T (K + V) + (T / C) K V) per head, linear in T with a small constant; the
    recurrent form's cache holds a K x V state per step. Backward recomputes everything inside
    a chunk (the decays, the intra-chunk scores, the states at every step never exist): cheap
    batched work in exchange for memory. b replaces g: backward needs only b. One exception:
    when every chunk is one mild block (a fresh layer's gates), ``mild`` keeps that block's
    matmul pieces, the scores A and the factors, T (4 K + C) more numbers per head (5 T K at
    C = K, where q, k, v and b are 4 T K), so that backward does not make them again.
    """

    q: np.ndarray  # (B, H, T, K)
    k: np.ndarray  # (B, H, T, K)
    v: np.ndarray  # (B, H, T, V)
    b: np.ndarray  # (B, H, N, C, K) chunk-local cumsum of g, kept instead of g (same size)
    states: np.ndarray  # (B, H, N + 1, K, V): states[:, :, n] = H_n, H_0 = S_0, H_N = S_T;
    #                     (B, H, N, K, V), H_0 .. H_{N-1}, when has_final_state is False
    scale: float  # s, multiplies q (a Python float; backward casts it to q's dtype)
    chunk_size: int  # C actually used: min(chunk_size, T)
    sub_chunk_size: int  # c actually used: min(sub_chunk_size, C)
    has_initial_state: bool  # False: S_0 was zeros and backward returns d_initial_state = None
    has_final_state: bool  # False: the forward skipped H_N = S_T (``final_state`` recomputes it)
    reset: np.ndarray | None  # (B, H, T, K) bool, gates at or below the floor (dg = 0 there)
    mild: _chunk_tiles.MildChunks | None  # (B, H, N, C, C|K) each, or None: see above


def forward(q, k, v, g, *, scale=None, initial_state=None, chunk_size=64, sub_chunk_size=None,
            output_final_state=True):
    """Run the recurrence chunk by chunk: return ``(o, final_state, cache)``.

    Same signature and results as ``recurrent.forward``, plus ``chunk_size`` (C >= 1; the last
    chunk may be shorter; a C larger than T is used as T) and ``sub_chunk_size`` (c >= 1, the
    largest tile of the chunk computed elementwise, default ``DEFAULT_SUB_CHUNK_SIZE``; the chunk
    is halved until its tiles are at most that long; c need not divide C, and
    a c larger than C is used as C). Neither changes the result beyond rounding.
    ``output_final_state=False`` skips the last state update (3): final_state is returned as
    None and the cache holds H_0 .. H_{N-1}; ``final_state(cache)`` computes S_T later if wanted.
    """
    B, H, T, K, V, scale = check_gla_inputs(q, k, v, g, initial_state, scale)
    output_final_state = check_bool("output_final_state", output_final_state)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    sub_chunk_size = check_positive_int(
        "sub_chunk_size", DEFAULT_SUB_CHUNK_SIZE if sub_chunk_size is None else sub_chunk_size)
    C = min(chunk_size, T)
    c = min(sub_chunk_size, C)
    N = -(-T // C)
    s = q.dtype.type(scale)  # a NumPy scalar of the input dtype: float32 stays float32
    g, reset = floor_log_gates(g)  # exact, and b below cannot overflow (module docstring)
    S0 = initial_state  # None: zeros

    reads_state = initial_state is not None or N > 1  # else every H_n is zero: (1) is zero

    # whole-batch results, each block writing its part in place
    o = np.empty_like(v)  # (B, H, T, V)
    b = np.empty((B, H, N, C, K), dtype=q.dtype)
    states = np.empty((B, H, N + output_final_state, K, V), dtype=q.dtype)  # H_0 .. H_N or N-1
    mild = _chunk_tiles.MildChunks.empty((B, H, N), C, K, q.dtype)  # kept if every block fills it
    for blk in _blocks(B, H, T * max(K, V)):  # a cache measure only: see BLOCK_ENTRIES
        whole = _forward_block(q[blk], k[blk], v[blk], g[blk], None if S0 is None else S0[blk],
                               s, C, c, reads_state, output_final_state,
                               None if mild is None else mild.take(blk),
                               (o[blk], b[blk], states[blk]))
        if not whole:
            mild = None
    cache = ChunkedCache(q, k, v, b, states, scale, C, c, initial_state is not None,
                         output_final_state, reset, mild)
    return o, states[:, :, N].copy() if output_final_state else None, cache


def _forward_block(q, k, v, g, S0, s, C, c, reads_state, output_final_state, keep, out):
    """The forward on one block of (batch, head) pairs: write o, b and the states H_0 .. H_N
    into ``out`` (the block's views of the whole-batch arrays) and return whether each chunk
    was one mild block (whose pieces are then written into ``keep``, if given).

    Arguments are the block's slices of the inputs (S0 None when there is no initial state);
    s is the scale as a NumPy scalar of the input dtype. ``reads_state=False`` says that every
    entering state H_n is zero (one chunk and no initial state), so the reads (1) are skipped:
    exactly zero, and the training model's whole sequence (T = 64) is one chunk.
    ``output_final_state=False`` stops the states at H_{N-1}: the last chunk's write is skipped.
    """
    o_out, b, states = out  # (B, H, T, V), (B, H, N, C, K), (B, H, N + 1 or N, K, V)
    T = q.shape[2]
    qs, k_c, v_c = s * _to_chunks(q, C), _to_chunks(k, C), _to_chunks(v, C)
    b, l = _chunk_decays(g, C, out=b)

    # (3) state passing: what chunk n writes, decayed to its end, then a loop over chunks
    N = b.shape[2]
    passed = N if output_final_state else N - 1  # the chunks whose leaving state is kept
    states[:, :, 0] = 0 if S0 is None else S0
    if passed:
        writes = _chunk_writes(k_c[:, :, :passed], v_c[:, :, :passed], b[:, :, :passed],
                               l[:, :, :passed])  # (B, H, passed, K, V)
        chunk_decay = np.exp(l[:, :, :passed])[..., None]  # (B, H, passed, K, 1)
        for n in range(passed):
            states[:, :, n + 1] = chunk_decay[:, :, n] * states[:, :, n] + writes[:, :, n]

    # (2) intra-chunk: past pairs u < t by halving the chunk, the pair u = t (no gate) apart
    o_view = _chunked_view(o_out, C)  # (B, H, N, C, V) or None (padding): o is then copied
    o, whole = _chunk_tiles.forward_keeping(qs, k_c, v_c, b, c, keep, out=o_view)
    if not whole:  # else the one matmul per chunk had the pairs u = t on its diagonal
        A_self = np.einsum("...tk,...tk->...t", qs, k_c)[..., None]  # (B, H, N, C, 1)
        o += A_self * v_c
    if reads_state:
        # (1) inter-chunk: read the entering state with decayed queries (exponents <= 0)
        o += (qs * np.exp(b)) @ states[:, :, :N]
    if o_view is None:
        o_out[...] = _from_chunks(o, T)
    return whole


def _chunk_writes(k_c, v_c, b, l):
    """What each chunk writes into the state leaving it (3): sum_u (k_u * exp(l_n - b_u)) v_u^T,
    (..., K, V) from k_c, b (..., C, K), v_c (..., C, V) and l (..., K); exponents <= 0."""
    k_to_end = k_c * np.exp(l[..., None, :] - b)  # (..., C, K)
    return k_to_end.swapaxes(-1, -2) @ v_c


def final_state(cache):
    """S_T = H_N from a ``ChunkedCache``, for a forward run with ``output_final_state=False``.

    Recomputes the last step of (3) from what the cache keeps (H_{N-1}, the last chunk's k, v
    and b): the same operations as the forward, so the same numbers as its final state. From a
    cache that has H_N already, returns a copy of it. (B, H, K, V), a new array.
    """
    check_cache(cache, ChunkedCache, "chunked.forward")
    if cache.has_final_state:
        return cache.states[:, :, -1].copy()
    N, C = cache.b.shape[2], cache.chunk_size
    last = slice((N - 1) * C, None)  # the last chunk's rows, padded below like the forward's
    k_c, v_c = _to_chunks(cache.k[:, :, last], C), _to_chunks(cache.v[:, :, last], C)
    b, l = cache.b[:, :, N - 1:], cache.b[:, :, N - 1:, -1, :]  # (B, H, 1, C, K), (B, H, 1, K)
    writes = _chunk_writes(k_c, v_c, b, l)[:, :, 0]  # (B, H, K, V)
    return np.exp(l[:, :, 0])[..., None] * cache.states[:, :, N - 1] + writes


def _blocks(B, H, entries_per_head):
    """Index tuples (batch slice, head slice) that cover B x H in blocks of whole batch rows, or
    of heads of one batch row, with at most about BLOCK_ENTRIES / entries_per_head heads each."""
    heads = max(1, BLOCK_ENTRIES // entries_per_head)
    if heads >= H:
        rows = heads // H
        return [(slice(i, i + rows), slice(None)) for i in range(0, B, rows)]
    return [(slice(i, i + 1), slice(j, j + heads)) for i in range(B) for j in range(0, H, heads)]


def backward(do, d_final_state, cache):
    """Backpropagate through the chunkwise form: return ``(dq, dk, dv, dg, d_initial_state)``.

    Result (docs/derivations/recurrence/chunked.md); E_n is the gradient on H_{n+1}, the state
    leaving chunk n; r, t, u are rows of chunk n; dA = do v^T:

        E_{N-1} = d_final_state,   E_{n-1} = diag(exp l_n) E_n + s sum_t (q_t exp b_t) do_t^T
        d_initial_state = diag(exp l_0) E_0 + s sum_{t in chunk 0} (q_t exp b_t) do_t^T
        dq_t = s exp(b_t) * (H_n do_t) + s sum_{u<t} dA[t,u] exp(b_t - b_u) * k_u + s dA[t,t] k_t
        dk_u = exp(l_n - b_u) * (E_n v_u) + s sum_{t>u} dA[t,u] exp(b_t - b_u) * q_t
               + s dA[u,u] q_u
        dv_u = (k_u exp(l_n - b_u))^T E_n + sum_{t>=u} A[t,u] do_t
        dg_r = sum_{t>=r} (q dq~ - k dk~)_t + sum_{u<r} k_u * exp(l_n - b_u) * (E_n v_u)
               + exp(l_n) * rowsum(H_n * E_n)

    dq~ is dq without its last term s dA[t,t] k_t; dk~ is the middle (past-pair) term of dk.
    The dg line is the gate identity (reverse cumsum of q dq - k dk within the chunk plus the
    boundary term rowsum(H_{n+1} * E_n)) with the terms that hold no gate left out, so that
    nothing large cancels when the gates are strong.

    ``do=None`` or ``d_final_state=None`` mean zero. ``d_initial_state`` is None when the
    forward had no initial state. A ``d_final_state`` is taken whether or not the forward
    returned S_T (``output_final_state``): S_T is the same function of the inputs either way
    (``final_state(cache)`` recomputes it), and backward never reads S_T itself, only E_{N-1}.
    """
    q, k, v, b, states, scale, C, c, has_initial_state, _, reset, mild = check_cache(
        cache, ChunkedCache, "chunked.forward")
    B, H, T, K = q.shape
    V = v.shape[3]
    do, d_final_state = check_gla_upstream(do, d_final_state, B, H, T, K, V, q.dtype)
    s = q.dtype.type(scale)

    # With one chunk, the state entering it is S_0 and the gradient on the state leaving it is
    # d_final_state; when those are zero, every term through them is exactly zero and skipped.
    N = b.shape[2]
    reads_state = has_initial_state or N > 1
    writes_state = d_final_state is not None or N > 1

    # whole-batch gradients, each block writing its part in place
    dq, dk, dv, dg = np.empty_like(q), np.empty_like(k), np.empty_like(v), np.empty_like(q)
    d_initial_state = np.empty((B, H, K, V), dtype=q.dtype) if has_initial_state else None
    for blk in _blocks(B, H, T * max(K, V)):  # a cache measure only: see BLOCK_ENTRIES
        _backward_block(do[blk], None if d_final_state is None else d_final_state[blk], q[blk],
                        k[blk], v[blk], b[blk], states[blk], s, C, c, reads_state, writes_state,
                        None if mild is None else mild.take(blk),
                        (dq[blk], dk[blk], dv[blk], dg[blk],
                         None if d_initial_state is None else d_initial_state[blk]))
    if reset is not None:  # the floor max(g, floor) passes no gradient below it
        dg[reset] = 0
    return dq, dk, dv, dg, d_initial_state


def _backward_block(do, d_final_state, q, k, v, b, states, s, C, c, reads_state, writes_state,
                    mild, out):
    """The backward on one block of (batch, head) pairs: write dq, dk, dv, dg and dS_0 into
    ``out`` (the block's views of the whole-batch arrays; dS_0's is None when not wanted).

    Arguments are the block's slices of the upstream gradients (d_final_state None: zero) and
    of the cache (``mild`` its MildChunks or None); s is the scale as a NumPy scalar of the
    input dtype. Two flags skip terms that are exactly zero (one chunk, as in the training
    model at T = 64): ``reads_state=False`` says every entering state H_n is zero (no initial
    state), ``writes_state=False`` that every E_n is zero (no gradient on the final state).
    """
    T = q.shape[2]
    dq_out, dk_out, dv_out, dg_out, dS0_out = out
    # (B, H, N, C, .) views of the outputs, or None (padding): those results are then copied
    dq_c, dk_c, dv_c, dg_c = (_chunked_view(x, C) for x in (dq_out, dk_out, dv_out, dg_out))

    # recompute the chunk-local quantities of the forward
    q_c, k_c, v_c, do_c = _to_chunks(q, C), _to_chunks(k, C), _to_chunks(v, C), _to_chunks(do, C)
    qs = s * q_c
    l = b[:, :, :, -1, :]  # (B, H, N, K)
    entering = states[:, :, :b.shape[2]]  # H_n, (B, H, N, K, V); H_N is never read

    # the state pass in reverse: E_n, the gradient on the state leaving chunk n, and dS_0
    E = None
    if reads_state or writes_state:
        q_decay = np.exp(b)  # (B, H, N, C, K)
        E, d_initial_state = _state_grads(qs * q_decay, do_c, l, d_final_state)
        if dS0_out is not None:
            dS0_out[...] = d_initial_state

    dq_inter = dk_state = dv_state = None  # exactly zero when the states they pass through are
    if reads_state:
        # forward (1): o_t = s * H_n^T (q_t * exp b_t)
        # so:  dq_t = s * exp(b_t) * (H_n do_t)
        dq_inter = s * q_decay * _chunk_tiles.times_transposed(do_c, entering)  # do H_n^T
    if writes_state:
        # forward (3): H_{n+1} = diag(exp l_n) H_n + sum_u (k_u * exp(l_n - b_u)) v_u^T
        # so:  dk_u = exp(l_n - b_u) * (E_n v_u),  dv_u = (k_u * exp(l_n - b_u))^T E_n
        k_decay = np.exp(l[:, :, :, None, :] - b)  # (B, H, N, C, K)
        dk_state = k_decay * _chunk_tiles.times_transposed(v_c, E)  # v E_n^T (B, H, N, C, K)
        dv_state = (k_c * k_decay) @ E  # (B, H, N, C, V)

    # forward (2): o_t += sum_{u < t} A[t, u] v_u + A_self[t] v_t,  A_self[t] = s q_t . k_t
    # so:  dA = do v^T,  dv += A^T do + A_self do,  past pairs through the halving,
    #      dq_t += s dA[t, t] k_t,  dk_t += s dA[t, t] q_t
    dqs_past, dk_past, dv_past, with_self = _chunk_tiles.backward_keeping(do_c, qs, k_c, v_c,
                                                                          b, c, mild)
    dA_self = np.einsum("...tv,...tv->...t", do_c, v_c)[..., None]  # (B, H, N, C, 1)
    if with_self:  # the kept matmul had the pairs u = t on its diagonal: dv_past holds them
        dv = _total(dv_past, dv_state, out=dv_c)
    else:
        A_self = np.einsum("...tk,...tk->...t", qs, k_c)[..., None]  # (B, H, N, C, 1)
        dv = _total(dv_past, A_self * do_c, dv_state, out=dv_c)
    # the parts of dq that pass through a gate, s dqs_past (+ dq_inter), in dqs_past's array
    dq_gated = _total(np.multiply(dqs_past, s, out=dqs_past), dq_inter, out=dqs_past)
    dq = np.add(dq_gated, s * dA_self * k_c, out=dq_c)
    dk = _total(dk_past, dA_self * qs, dk_state, out=dk_c)

    # the log gates: every gated exponent above passes its gradient to the gates it sums
    reads = q_c * dq_gated
    reads -= k_c * dk_past
    dg = _gate_grad(reads, k_c * dk_state if writes_state else None, l,
                    entering if reads_state else None, E, out=dg_c)
    for total, in_place, whole in ((dq, dq_c, dq_out), (dk, dk_c, dk_out), (dv, dv_c, dv_out),
                                   (dg, dg_c, dg_out)):
        if in_place is None:  # padding: the result was made apart, copy its rows 0 .. T-1
            whole[...] = _from_chunks(total, T)


def _total(*terms, out=None):
    """The sum of the terms that are not None (those are exactly zero), without a pass over a
    zero: in ``out`` if given (which may be the first term's array), else a new array when two
    or more terms are given."""
    present = [term for term in terms if term is not None]
    if len(present) == 1:
        if out is None or out is present[0]:
            return present[0]
        np.copyto(out, present[0])
        return out
    total = np.add(present[0], present[1], out=out)
    for term in present[2:]:
        total += term
    return total


def _state_grads(q_read, do_c, l, d_final_state):
    """The reverse pass over chunks: return E (B, H, N, K, V) and the gradient on H_0 (= S_0).

    E[:, :, n] is E_n, the gradient on H_{n+1}, the state leaving chunk n. q_read = s q exp(b)
    (B, H, N, C, K) are the queries that read the entering state in (1); l (B, H, N, K) the
    chunk decays; d_final_state (B, H, K, V) or None (zero).
    """
    # forward (1) and (3): o_t = s H_n^T (q_t exp b_t),  H_{n+1} = diag(exp l_n) H_n + ...
    # so:  dH_n = diag(exp l_n) E_n + s * sum_t (q_t exp b_t) do_t^T, a reverse loop over chunks
    read_grad = q_read.swapaxes(-1, -2) @ do_c  # (B, H, N, K, V)
    chunk_decay = np.exp(l)[..., None]  # (B, H, N, K, 1)
    N = read_grad.shape[2]
    E = np.empty_like(read_grad)  # (B, H, N, K, V), E[:, :, n]: gradient on H_{n+1}
    E[:, :, N - 1] = 0 if d_final_state is None else d_final_state
    for n in range(N - 1, 0, -1):
        E[:, :, n - 1] = chunk_decay[:, :, n] * E[:, :, n] + read_grad[:, :, n]
    d_initial_state = chunk_decay[:, :, 0] * E[:, :, 0] + read_grad[:, :, 0]
    return E, d_initial_state


@functools.lru_cache(maxsize=None)
def _triangles(C, dtype):
    """The 0/1 (C, C) matrices of the sums over rows: [r, t] = 1 if t >= r, and [r, u] = 1 if
    u < r (made once per size and dtype, and never written to)."""
    at_or_after = np.triu(np.ones((C, C), dtype=dtype))
    before = np.tril(np.ones((C, C), dtype=dtype), k=-1)
    at_or_after.flags.writeable = before.flags.writeable = False
    return at_or_after, before


def _gate_grad(reads, writes, l, entering, E, out=None):
    """dg in chunks (B, H, N, C, K), from the three families of gated exponents of a chunk.

    reads = q * dq~ - k * dk~ (the parts of dq and dk that pass through a gate: the reads of the
    entering state and the past pairs), writes = k * dk_state (the writes into the leaving
    state), both (B, H, N, C, K); l (B, H, N, K); entering H_n and E_n (B, H, N, K, V).
    ``writes=None`` or ``entering=None`` leave out a family that is exactly zero. ``out``: an
    array like reads to write dg into.
    """
    # dg: each log gate g_r gets the gradient of every exponent whose window of gates holds it
    # (docs/derivations/recurrence/chunked.md): inside chunk n, with u < r <= t,
    #   reads of the entering state and past pairs (t >= r): sum over t >= r of q dq - k dk
    #   without the pairs u = t (they hold no gate and would only cancel),
    #   writes into the leaving state (u < r): sum over u < r of k * dk_state,
    #   the entering state carried through the whole chunk: exp(l_n) * rowsum(H_n * E_n).
    # The sums over rows of a chunk are products with 0/1 triangular (C, C) matrices.
    at_or_after, before = _triangles(reads.shape[3], reads.dtype)
    dg = np.matmul(at_or_after, reads, out=out)
    if writes is not None:
        dg += before @ writes
    if entering is not None:
        carried = np.exp(l) * np.sum(entering * E, axis=-1)  # (B, H, N, K)
        dg += carried[:, :, :, None, :]
    return dg
