"""Intra-chunk attention with secondary (sub-chunk) tiling: the inner part of ``chunked``.

Inside one chunk, with b the chunk-local inclusive cumsum of the log gates and qs = scale * q,
the scores of the past pairs are

    A[t, u] = sum_i qs_t[i] k_u[i] exp(b_t[i] - b_u[i])      for u < t, else 0.

(The pair u = t holds no gate, exp(0) = 1; ``chunked`` adds it as qs_t . k_t.) The decay sits
inside the sum over the key channel i, so A is not one matmul. The paper's secondary chunking
cuts the chunk into sub-chunks of c rows and walks over them (a loop of C / c steps, each
batched over every chunk of every sequence and head). For the sub-chunk of rows start..stop-1:

* off-diagonal tiles, all earlier keys u < start at once: the reference row p = start - 1,
  the last row before the sub-chunk, lies between query and key. b never increases along the
  chunk, so b_t <= b_p <= b_u and
      exp(b_t - b_u) = exp(b_t - b_p) * exp(b_p - b_u)        both factors <= 1:
  the tiles are one matmul of (qs * exp(b - b_p)) and (k * exp(b_p - b)).
* the diagonal tile (t, u both in the sub-chunk): its rows are queries and keys at once, and a
  matmul needs one reference row p for the whole tile with b_t <= b_p <= b_u for every query t
  and key u; none exists (b decreases), and any shared p leaves a factor that grows like the naive
  one over the sub-chunk. So it uses the elementwise log-space formula, a (c, c, K) tensor
  exp(b_t - b_u) whose exponent is set to -inf for u >= t BEFORE exp.

Every exponent evaluated is <= 0. The last sub-chunk may be shorter than c. The size c trades
the elementwise diagonal work (c K per row) against the reference factors (about C K / (2 c)
per row); see docs/derivations/recurrence/chunked.md for the measurements behind the default.
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
    t_masked, u_masked = np.triu_indices(c)  # the pairs u >= t
    diff[..., t_masked, u_masked, :] = -np.inf  # masked before exp
    return np.exp(diff, out=diff)  # in place: one (..., c, c, K) array, not two


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

    A loop over the C / c sub-chunks (not over time steps), each step batched over every chunk.
    """
    C = qs.shape[-2]
    A = np.zeros((*qs.shape[:-1], C), dtype=qs.dtype)  # (..., C, C)
    for start in range(0, C, c):
        rows = slice(start, min(start + c, C))
        # diagonal tile: A[t, u] = sum_i qs_t[i] k_u[i] exp(b_t[i] - b_u[i]), u < t,
        # as qs_t . k_seen[t, u] with k_seen[t, u] = k_u decayed to row t (a matvec per row t)
        k_seen = _diagonal_decay(b[..., rows, :]) * k[..., None, rows, :]  # (..., c, c, K)
        A[..., rows, rows] = (k_seen @ qs[..., rows, :, None])[..., 0]
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
    and A is never stored. With dA = do v^T (docs/derivations/recurrence/chunked.md, step B3):

        dv_u  = sum_{t > u} A[t, u] do_t
        dqs_t = sum_{u < t} dA[t, u] exp(b_t - b_u) * k_u
        dk_u  = sum_{t > u} dA[t, u] exp(b_t - b_u) * qs_t
    """
    C = qs.shape[-2]
    dqs, dk, dv = np.zeros_like(qs), np.zeros_like(k), np.zeros_like(v)
    for start in range(0, C, c):
        rows = slice(start, min(start + c, C))
        do_rows = do[..., rows, :]  # (..., c, V)
        # forward: o_t += sum_u A[t, u] v_u   so: dA[t, u] = do_t . v_u,  dv_u += sum_t A[t, u] do_t
        # diagonal tile: A[t, u] = qs_t . k_seen[t, u],  k_seen[t, u] = decay[t, u] * k_u
        # so: dqs_t = sum_u dA[t, u] k_seen[t, u],   dk_u = sum_t dA[t, u] decay[t, u] * qs_t
        decay = _diagonal_decay(b[..., rows, :])  # (..., c, c, K)
        k_seen = decay * k[..., None, rows, :]  # (..., c, c, K), k_u decayed to row t
        A_tile = (k_seen @ qs[..., rows, :, None])[..., 0]  # (..., c, c)
        dA_tile = do_rows @ v[..., rows, :].swapaxes(-1, -2)  # (..., c, c)
        dv[..., rows, :] += A_tile.swapaxes(-1, -2) @ do_rows
        dqs[..., rows, :] += (dA_tile[..., :, None, :] @ k_seen)[..., 0, :]
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
