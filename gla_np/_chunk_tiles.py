"""Intra-chunk attention with secondary (sub-chunk) tiling: the inner loop of ``chunked``.

Inside one chunk of length C, with b the chunk-local inclusive cumsum of the log gates, the
intra-chunk scores are

    A[t, u] = sum_i qs_t[i] k_u[i] exp(b_t[i] - b_u[i])      for u <= t, else 0,

where qs = scale * q. The decay sits inside the sum over the key channel i, so A is not one
matmul. The paper's secondary chunking splits the chunk into M sub-chunks of length c and
treats two kinds of c x c tiles differently:

* off-diagonal tiles (key sub-chunk j before query sub-chunk m): pick a reference row r_m
  between them, r_m = b at the last row before sub-chunk m (r_0 = 0, the chunk start). Since
  b only decreases, b_t <= r_m <= b_u, and
      exp(b_t - b_u) = exp(b_t - r_m) * exp(r_m - b_u)      both factors <= 1,
  so the tile is an ordinary matmul of q_ref = qs * exp(b - r_m) and k_ref = k * exp(r_m - b).
  For query sub-chunk m we build k_ref over the whole chunk, zero (exponent -inf, set before
  exp) at keys that are not in an earlier sub-chunk; one matmul gives a row of tiles.
* diagonal tiles (query and key in the same sub-chunk): no row lies between t and u, so we use
  the elementwise log-space formula, a (c, c, K) decay tensor exp(b_t - b_u), masked to u <= t
  before exp.

Every exponent evaluated is <= 0 (or -inf). A chunk length that c does not divide is padded at
its end with rows of q = k = 0 and b repeated (a gate of 1), which changes nothing and is cut
off again. See docs/derivations/chunked.md.
"""

from __future__ import annotations

import numpy as np


def _diagonal_decay(b_rows):
    """exp(b_t - b_u) for past pairs u < t in one sub-chunk, (..., c, c, K); zero for u >= t.

    The exponent is set to -inf for u >= t BEFORE exp: for u > t it is positive and could
    overflow (and inf * 0 = nan). exp(-inf) = 0 exactly. (The pairs u = t carry no gate; the
    caller adds them.)
    """
    c = b_rows.shape[-2]
    diff = b_rows[..., :, None, :] - b_rows[..., None, :, :]  # (..., c, c, K), b_t - b_u
    diff[..., np.triu(np.ones((c, c), dtype=bool)), :] = -np.inf  # u >= t
    return np.exp(diff)


def _reference_decays(b, start, stop):
    """The two off-diagonal factors for query rows start:stop against keys 0:start.

    The reference row is r = b[start - 1], the last row before the sub-chunk. b decreases along
    the chunk, so exp(b_t - r) <= 1 for the query rows and exp(r - b_u) <= 1 for the keys.
    """
    r = b[..., start - 1 : start, :]  # (..., 1, K)
    return np.exp(b[..., start:stop, :] - r), np.exp(r - b[..., :start, :])


def scores(qs, k, b, c):
    """The past-pair scores A (..., C, C) from qs, k, b (..., C, K), tiled by sub-chunks of c.

    A[t, u] = sum_i qs_t[i] k_u[i] exp(b_t[i] - b_u[i]) for u < t, zero for u >= t: strictly
    lower triangular. The diagonal u = t (qs_t . k_t, no gate inside) is the caller's.

    A loop over the C / c sub-chunks (not over time steps), each step batched over every chunk.
    """
    C = qs.shape[-2]
    A = np.zeros((*qs.shape[:-1], C), dtype=qs.dtype)  # (..., C, C)
    for start in range(0, C, c):
        rows = slice(start, min(start + c, C))
        # diagonal tile: A[t, u] = sum_i qs_t[i] k_u[i] exp(b_t[i] - b_u[i]), u < t
        decay = _diagonal_decay(b[..., rows, :])  # (..., c, c, K)
        A[..., rows, rows] = np.einsum("...tk,...tuk,...uk->...tu",
                                       qs[..., rows, :], decay, k[..., rows, :])
        if start > 0:
            # off-diagonal tiles (all earlier keys at once): one matmul of factors <= 1
            q_decay, k_decay = _reference_decays(b, start, rows.stop)
            A[..., rows, :start] = ((qs[..., rows, :] * q_decay)
                                    @ (k[..., :start, :] * k_decay).swapaxes(-1, -2))
    return A


def backward(do, qs, k, v, b, c):
    """Gradients of o = A v with A = scores(qs, k, b, c): return (dqs, dk, dv), like the inputs.

    do, v (..., C, V); qs, k, b (..., C, K). The tiles of A are rebuilt sub-chunk by sub-chunk
    from the same factors as ``scores`` and used at once, so the decays are computed once here
    and A is never stored.
    """
    C = qs.shape[-2]
    dqs, dk, dv = np.zeros_like(qs), np.zeros_like(k), np.zeros_like(v)
    for start in range(0, C, c):
        rows = slice(start, min(start + c, C))
        do_rows = do[..., rows, :]  # (..., c, V)
        # forward: o_t += sum_u A[t, u] v_u   so: dA[t, u] = do_t . v_u,  dv_u += sum_t A[t, u] do_t
        # diagonal tile: A[t, u] = sum_i qs_t[i] k_u[i] decay[t, u, i]
        # so: dqs_t = sum_u dA[t, u] decay[t, u] * k_u,   dk_u = sum_t dA[t, u] decay[t, u] * qs_t
        decay = _diagonal_decay(b[..., rows, :])  # (..., c, c, K)
        A_tile = np.einsum("...tk,...tuk,...uk->...tu", qs[..., rows, :], decay, k[..., rows, :])
        dA_tile = do_rows @ v[..., rows, :].swapaxes(-1, -2)  # (..., c, c)
        dv[..., rows, :] += A_tile.swapaxes(-1, -2) @ do_rows
        dqs[..., rows, :] += np.einsum("...tu,...tuk,...uk->...tk",
                                       dA_tile, decay, k[..., rows, :])
        dk[..., rows, :] += np.einsum("...tu,...tuk,...tk->...uk",
                                      dA_tile, decay, qs[..., rows, :])
        if start > 0:
            # off-diagonal tiles: A = q_ref @ k_ref^T, q_ref = qs * q_decay, k_ref = k * k_decay
            # so: dq_ref = dA k_ref,  dk_ref = dA^T q_ref,  then times the decays
            q_decay, k_decay = _reference_decays(b, start, rows.stop)
            q_ref = qs[..., rows, :] * q_decay  # (..., c, K)
            k_ref = k[..., :start, :] * k_decay  # (..., start, K)
            A_tile = q_ref @ k_ref.swapaxes(-1, -2)  # (..., c, start)
            dA_tile = do_rows @ v[..., :start, :].swapaxes(-1, -2)  # (..., c, start)
            dv[..., :start, :] += A_tile.swapaxes(-1, -2) @ do_rows
            dqs[..., rows, :] += q_decay * (dA_tile @ k_ref)
            dk[..., :start, :] += k_decay * (dA_tile.swapaxes(-1, -2) @ q_ref)
    return dqs, dk, dv
