"""Intra-chunk attention with secondary (sub-chunk) tiling: the inner part of ``chunked``.

Inside one chunk, with b the chunk-local inclusive cumsum of the log gates and qs = scale * q,
the scores of the past pairs are

    A[t, u] = sum_i qs_t[i] k_u[i] exp(b_t[i] - b_u[i])      for u < t, else 0.

(The pair u = t holds no gate, exp(0) = 1; ``chunked`` adds it as qs_t . k_t.) The decay sits
inside the sum over the key channel i, so A is not one matmul. The paper's secondary chunking
cuts the chunk into sub-chunks of c rows and treats the tiles of A in two ways:

* off-diagonal tiles (the query's sub-chunk after the key's), one query sub-chunk of rows
  start..stop-1 against all earlier keys u < start at once: the reference row p = start - 1,
  the last row before the sub-chunk, lies between query and key. b never increases along the
  chunk, so b_t <= b_p <= b_u and
      exp(b_t - b_u) = exp(b_t - b_p) * exp(b_p - b_u)        both factors <= 1:
  the tiles are one matmul of (qs * exp(b - b_p)) and (k * exp(b_p - b)).
* diagonal tiles (t, u in the same sub-chunk): their rows are queries and keys at once, and a
  matmul needs one reference row p for the whole tile with b_t <= b_p <= b_u for every query t
  and key u; none exists (b decreases), and any shared p leaves a factor that grows like the
  naive one over the sub-chunk. So they use exp(b_t - b_u) itself, elementwise, one distance
  d = t - u at a time: rows d..c-1 of every sub-chunk against the rows d before them,
      A[t, t - d] = sum_i qs_t[i] k_{t-d}[i] exp(b_t[i] - b_{t-d}[i])     d = 1 .. c - 1,
  two shifted slices of the same sub-chunk. Only the past pairs u < t are ever formed, so
  every exponent is b_t - b_u <= 0 and there is nothing to mask.

Every exponent evaluated is <= 0. A chunk whose length is not a multiple of c is padded with
rows after its end (their gates 0, their q and k 0) and the padding is cut off again. The size c
trades the elementwise diagonal work (about c K / 2 per row) against the reference factors
(about C K / (2 c) per row); see docs/derivations/recurrence/chunked.md for the measurements
behind the default.
"""

from __future__ import annotations

import numpy as np


def _pad_rows(arrays, b, c):
    """Pad the row axis (-2) of ``arrays`` with zeros and of b with its last row, to a multiple of c.

    A padded row comes after every real row: it is never a key of a real query, and b repeated
    keeps every exponent b_t - b_u <= 0 (a zero would make them positive).
    """
    extra = -b.shape[-2] % c
    widths = [(0, 0)] * (b.ndim - 2) + [(0, extra), (0, 0)]
    return [np.pad(x, widths) for x in arrays], np.pad(b, widths, mode="edge")


def _sub_chunks(x, c):
    """(..., C, X) -> (..., C / c, c, X): the same memory seen by sub-chunk (a view)."""
    return x.reshape(*x.shape[:-2], x.shape[-2] // c, c, x.shape[-1])


def _pairs_at_distance(C, c, d):
    """Chunk rows (t, u) of the pairs u = t - d inside one sub-chunk, each (C / c, c - d)."""
    rows = np.arange(C).reshape(C // c, c)  # rows[m, i]: row i of sub-chunk m
    return rows[:, d:], rows[:, :-d]


def _reference_decays(b, start, stop):
    """The two off-diagonal factors for query rows start:stop against keys 0:start.

    The reference row is p = start - 1, the last row before the sub-chunk. b decreases along
    the chunk, so exp(b_t - b_p) <= 1 for the query rows and exp(b_p - b_u) <= 1 for the keys.
    """
    b_p = b[..., start - 1 : start, :]  # (..., 1, K)
    return np.exp(b[..., start:stop, :] - b_p), np.exp(b_p - b[..., :start, :])


def scores(qs, k, b, c):
    """The past-pair scores A (..., C, C) from qs, k, b (..., C, K), tiled by sub-chunks of c.

    A[t, u] = sum_i qs_t[i] k_u[i] exp(b_t[i] - b_u[i]) for u < t, zero for u >= t: strictly
    lower triangular. The diagonal u = t (qs_t . k_t, no gate inside) is the caller's.
    """
    C = qs.shape[-2]
    if C % c:
        (qs, k), b = _pad_rows([qs, k], b, c)
        return scores(qs, k, b, c)[..., :C, :C]
    A = np.zeros((*qs.shape[:-1], C), dtype=qs.dtype)  # (..., C, C)
    qs_sub, k_sub, b_sub = _sub_chunks(qs, c), _sub_chunks(k, c), _sub_chunks(b, c)
    for d in range(1, c):
        # diagonal tiles, the pairs at distance d in every sub-chunk at once:
        # A[t, u] = qs_t . k_seen[t],  k_seen[t] = k_u decayed to row t,  u = t - d
        t, u = _pairs_at_distance(C, c, d)
        decay = np.exp(b_sub[..., d:, :] - b_sub[..., :-d, :])  # (..., C/c, c-d, K), <= 1
        k_seen = np.multiply(decay, k_sub[..., :-d, :], out=decay)
        A[..., t, u] = np.einsum("...tk,...tk->...t", qs_sub[..., d:, :], k_seen)
    for start in range(c, C, c):
        # off-diagonal tiles of sub-chunk start:stop (all earlier keys): one matmul
        rows = slice(start, start + c)
        q_decay, k_decay = _reference_decays(b, start, rows.stop)
        A[..., rows, :start] = ((qs[..., rows, :] * q_decay)
                                @ (k[..., :start, :] * k_decay).swapaxes(-1, -2))
    return A


def backward(do, qs, k, v, b, c):
    """Gradients of o = A v with A = scores(qs, k, b, c): return (dqs, dk, dv), like the inputs.

    do, v (..., C, V); qs, k, b (..., C, K). The tiles of A are rebuilt from the same factors
    as ``scores`` and their decays used at once for dqs and dk, so each decay is computed once
    here; A itself is assembled only for dv. With dA = do v^T
    (docs/derivations/recurrence/chunked.md, step B3):

        dv_u  = sum_{t > u} A[t, u] do_t
        dqs_t = sum_{u < t} dA[t, u] exp(b_t - b_u) * k_u
        dk_u  = sum_{t > u} dA[t, u] exp(b_t - b_u) * qs_t
    """
    C = qs.shape[-2]
    if C % c:
        (do, qs, k, v), b = _pad_rows([do, qs, k, v], b, c)
        return [x[..., :C, :] for x in backward(do, qs, k, v, b, c)]
    # forward: o_t = sum_u A[t, u] v_u   so: dA[t, u] = do_t . v_u  (used where u < t)
    dA = do @ v.swapaxes(-1, -2)  # (..., C, C)
    A = np.zeros_like(dA)  # rebuilt tile by tile below, for dv at the end
    dqs, dk = np.zeros_like(qs), np.zeros_like(k)
    qs_sub, k_sub, b_sub = _sub_chunks(qs, c), _sub_chunks(k, c), _sub_chunks(b, c)
    dqs_sub, dk_sub = _sub_chunks(dqs, c), _sub_chunks(dk, c)  # views: += writes into dqs, dk
    for d in range(1, c):
        # diagonal tiles at distance d: A[t, u] = qs_t . (decay[t] * k_u),  u = t - d
        # so: dqs_t += dA[t, u] decay[t] * k_u,   dk_u += dA[t, u] decay[t] * qs_t
        t, u = _pairs_at_distance(C, c, d)
        decay = np.exp(b_sub[..., d:, :] - b_sub[..., :-d, :])  # (..., C/c, c-d, K), <= 1
        k_seen = decay * k_sub[..., :-d, :]
        A[..., t, u] = np.einsum("...tk,...tk->...t", qs_sub[..., d:, :], k_seen)
        dA_d = dA[..., t, u][..., None]  # (..., C/c, c-d, 1)
        dqs_sub[..., d:, :] += dA_d * k_seen
        decay *= dA_d
        dk_sub[..., :-d, :] += np.multiply(decay, qs_sub[..., d:, :], out=decay)
    for start in range(c, C, c):
        # off-diagonal tiles: A = q_ref @ k_ref^T, q_ref = qs * q_decay, k_ref = k * k_decay
        # so: dq_ref = dA k_ref,  dk_ref = dA^T q_ref,  then times the decays
        rows = slice(start, start + c)
        q_decay, k_decay = _reference_decays(b, start, rows.stop)
        q_ref = qs[..., rows, :] * q_decay  # (..., c, K)
        k_ref = k[..., :start, :] * k_decay  # (..., start, K)
        A[..., rows, :start] = q_ref @ k_ref.swapaxes(-1, -2)
        dA_tile = dA[..., rows, :start]  # (..., c, start)
        dqs[..., rows, :] += q_decay * (dA_tile @ k_ref)
        dk[..., :start, :] += k_decay * (dA_tile.swapaxes(-1, -2) @ q_ref)
    # forward: o_t = sum_{u < t} A[t, u] v_u   so: dv_u = sum_t A[t, u] do_t
    dv = A.swapaxes(-1, -2) @ do  # (..., C, V)
    return dqs, dk, dv
