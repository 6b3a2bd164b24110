"""The magnitudes behind the oracle's bound: sums of |terms| and how the terms are weighted.

Each entry of a GLA tensor is a sum of terms; its magnitude M is the sum of their absolute
values, computed by running the recurrence on |inputs| (every decay coefficient is positive).
This module holds what that run alone does not give: each term weighted by the steps or chunk
passes of its decay window (M_window, M_pass), the in-chunk key pairs a kernel following
docs/derivations/recurrence/chunked.md B5 adds and cancels in dg, and dg's magnitude for a
kernel that uses the plain gate identity. :mod:`gla_np.testing.float64_reference` calls these
and stores the results on its :class:`Reference`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Magnitudes(NamedTuple):
    """Per entry of one tensor: the sum of |terms| that make it (M), that sum with each term
    weighted by the state passes between chunks its decay window crosses (M_pass: a chunk
    boundary of the kernel lies in the window), and weighted by its window's length, the steps
    the float64 reference takes (M_window)."""

    magnitude: np.ndarray
    passes: np.ndarray
    window: np.ndarray


def _sequences(segments, T):
    return segments or [slice(0, T)]


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
