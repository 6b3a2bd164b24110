"""GLA as attention with a data-dependent decay mask: the whole sequence at once.

Adds over ``recurrent``: the loop over time is unrolled into one formula. With G the cumulative
log gate (G_t = g_1 + ... + g_t), the state S_t is the sum of past writes, each decayed by
exp(G_t - G_u) per key channel, so

    o_t = scale * sum_{u <= t} sum_i q_t[i] k_u[i] exp(G_t[i] - G_u[i]) v_u  +  S_0 term.

The decay sits INSIDE the q.k sum: it is a (T, T, K) tensor per head, not a (T, T) matrix
(a scalar gate per head would give the matrix). For teaching and checking only: memory is
O(B H T^2 K), and inputs whose decay tensor would exceed ``MAX_DECAY_ENTRIES`` are refused.
Use ``chunked`` for long sequences.

Numerics: every exponent is a log-gate difference G_t - G_u with u <= t, hence <= 0. The u > t
entries are set to -inf BEFORE exp (exp(-inf) = 0); exponentiating first would overflow there
(G_t - G_u > 0 grows with u - t), and inf * 0 = nan survives any mask applied afterwards.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gla_np._checks import check_bool
from gla_np.recurrence._gla_inputs import (check_cache, check_gla_inputs, check_gla_upstream,
                                floor_log_gates)
from gla_np.recurrence.gate_identity import reverse_cumsum

MAX_DECAY_ENTRIES = 2 ** 28  # B*H*T*T*K above this is refused (2**28 float64 entries = 2 GiB)


def causal_decay(G, *, past_only=False):
    """W[t, u, i] = exp(G_t[i] - G_u[i]) for u <= t, else 0; shape (B, H, T, T, K).

    The mask is applied to the exponent (masked entries get -inf), never to exp's result.
    ``past_only=True`` also masks the diagonal u = t (where W is 1), keeping pairs u < t.
    """
    T = G.shape[2]
    logW = G[:, :, :, None, :] - G[:, :, None, :, :]  # (B, H, T, T, K), logW[t, u] = G_t - G_u
    keep = np.tril(np.ones((T, T), dtype=bool), k=-1 if past_only else 0)[:, :, None]  # (T, T, 1)
    return np.exp(np.where(keep, logW, -np.inf))  # (B, H, T, T, K), every exponent <= 0


class ParallelCache(NamedTuple):
    """What ``backward`` needs. Stores the inputs, G and S_0. Backward recomputes the decay
    tensor (the one O(T^2 K) array) and the scores rather than keeping them alive between the
    passes; it rebuilds them for past pairs u < t only (see ``backward``)."""

    q: np.ndarray  # (B, H, T, K)
    k: np.ndarray  # (B, H, T, K)
    v: np.ndarray  # (B, H, T, V)
    G: np.ndarray  # (B, H, T, K), inclusive cumulative sum of g over time
    S0: np.ndarray  # (B, H, K, V), the initial state; zeros when none was given
    scale: float  # s, multiplies q
    has_initial_state: bool  # False: backward returns d_initial_state = None
    reset: np.ndarray | None  # (B, H, T, K) bool, gates at or below the floor (dg = 0 there)


def forward(q, k, v, g, *, scale=None, initial_state=None, output_final_state=True):
    """Attention with a decay mask: return ``(o, final_state, cache)``, equal to ``recurrent``'s.

    ``output_final_state=False`` skips (5) and returns None for S_T.

    Equations (numbered as in docs/derivations/recurrence/parallel.md):
        (0) g = max(g, floor): exact, a gate below the floor has exp(g) = 0 in the dtype
        (1) G = cumsum(g) over time
        (2) W[t,u,i] = exp(G_t[i] - G_u[i]) if u <= t else 0
        (3) A[t,u] = scale * sum_i q_t[i] k_u[i] W[t,u,i]
        (4) o = A v + scale * (q * exp(G)) S_0
        (5) S_T = diag(exp G_T) S_0 + sum_u (k_u * exp(G_T - G_u)) v_u^T
    """
    B, H, T, K, V, scale = check_gla_inputs(q, k, v, g, initial_state, scale)
    output_final_state = check_bool("output_final_state", output_final_state)
    if B * H * T * T * K > MAX_DECAY_ENTRIES:
        raise ValueError(f"T: the parallel form builds a (B, H, T, T, K) decay tensor; with "
                         f"T={T} it has {B * H * T * T * K} entries, over the limit of "
                         f"{MAX_DECAY_ENTRIES}. Use form='chunk' for long sequences.")
    S0 = np.zeros((B, H, K, V), dtype=q.dtype) if initial_state is None else initial_state
    g, reset = floor_log_gates(g)  # (0) exact, and G below cannot overflow
    G = np.cumsum(g, axis=2)  # (1) (B, H, T, K)
    W = causal_decay(G)  # (2) (B, H, T, T, K)
    A = scale * np.einsum("bhti,bhui,bhtui->bhtu", q, k, W)  # (3) (B, H, T, T)
    o = A @ v + scale * (q * np.exp(G)) @ S0  # (4) (B, H, T, V)
    S_T = None
    if output_final_state:
        G_T = G[:, :, -1]  # (B, H, K)
        kE = k * np.exp(G_T[:, :, None, :] - G)  # (B, H, T, K), exponents <= 0
        S_T = np.exp(G_T)[..., None] * S0 + np.swapaxes(kE, 2, 3) @ v  # (5) (B, H, K, V)
    cache = ParallelCache(q, k, v, G, S0, scale, initial_state is not None, reset)
    return o, S_T, cache


def backward(do, d_final_state, cache):
    """Backward through (1)-(5): return ``(dq, dk, dv, dg, d_initial_state)``.

    Split (3) into past pairs u < t (W_past, A_past) and the diagonal u = t (W = 1, so
    A_self[t] = scale * q_t . k_t). With qG = q * exp(G), kE = k * exp(G_T - G), dS_T =
    d_final_state (docs/derivations/recurrence/parallel.md):

        dA      = do v^T                       dA_self[t] = do_t . v_t
        dq_past = scale * sum_{u<t} dA[t,u] k_u W[t,u]
        dk_past = scale * sum_{t>u} dA[t,u] q_t W[t,u]
        dq = dq_past + scale * dA_self k + scale * (do S_0^T) * exp(G)
        dk = dk_past + scale * dA_self q + (v dS_T^T) * exp(G_T - G)
        dv = A_past^T do + A_self do + kE dS_T
        dg_r = sum_{t >= r} (q * dq_past - k * dk_past)_t + sum_{t >= r} qG_t * scale (do S_0^T)_t
               + sum_{u < r} kE_u * (v dS_T^T)_u + rowsum(dS_T * exp(G_T) S_0)
        d_initial_state = scale * qG^T do + diag(exp G_T) dS_T

    Each dg term collects the exponents whose window of gates contains g_r. The diagonal pairs
    span no gate and are left out, so nothing large cancels, even for very strong gates.
    """
    q, k, v, G, S0, scale, has_initial_state, reset = check_cache(cache, ParallelCache,
                                                                  "parallel.forward")
    B, H, T, K = q.shape
    V = v.shape[3]
    do, dS_T = check_gla_upstream(do, d_final_state, B, H, T, K, V, q.dtype)
    # Recompute (2)-(3), split into past pairs u < t and the diagonal u = t, where W = 1.
    W_past = causal_decay(G, past_only=True)  # (B, H, T, T, K)
    A_past = scale * np.einsum("bhti,bhui,bhtui->bhtu", q, k, W_past)  # (B, H, T, T)
    A_self = scale * np.einsum("bhti,bhti->bht", q, k)  # (B, H, T), A[t, t]
    expG = np.exp(G)  # (B, H, T, K), exponents <= 0

    # forward (4): o = A v + scale * qG S_0,  qG = q * exp(G),  A = A_past + diag(A_self)
    # so:  dA = do v^T,  dv = A^T do,  d(qG) = scale * do S_0^T,  dS_0 = scale * qG^T do,
    #      dq = d(qG) * exp(G),  and the exponent G_t = g_1 + ... + g_t gets d(qG)_t * qG_t
    dA = do @ np.swapaxes(v, 2, 3)  # (B, H, T, T), only u < t is used below
    dA_self = np.einsum("bhtv,bhtv->bht", do, v)  # (B, H, T), dA[t, t]
    dv = np.swapaxes(A_past, 2, 3) @ do + A_self[..., None] * do
    dqG = scale * do @ np.swapaxes(S0, 2, 3)  # (B, H, T, K)
    dS0 = scale * np.swapaxes(q * expG, 2, 3) @ do  # (B, H, K, V)
    dq = dqG * expG
    dg = reverse_cumsum(dqG * q * expG, axis=2)  # every r <= t

    # forward (3): A[t,u] = scale * sum_i q_t[i] k_u[i] W[t,u,i]
    # so:  dq_t += scale sum_u dA[t,u] k_u W[t,u],  dk_u = scale sum_t dA[t,u] q_t W[t,u];
    #      the past exponent G_t - G_u = g_{u+1} + ... + g_t gets dlogW[t,u] = scale dA q_t k_u W,
    #      whose row sums are q * dq_past and column sums k * dk_past, so
    #      dg_r += sum_{t >= r, u < r} dlogW[t,u] = sum_{t >= r} (q * dq_past - k * dk_past)_t
    dq_past = scale * np.einsum("bhtu,bhui,bhtui->bhti", dA, k, W_past)  # (B, H, T, K)
    dk_past = scale * np.einsum("bhtu,bhti,bhtui->bhui", dA, q, W_past)  # (B, H, T, K)
    dq = dq + dq_past + scale * dA_self[..., None] * k
    dk = dk_past + scale * dA_self[..., None] * q
    dg = dg + reverse_cumsum(q * dq_past - k * dk_past, axis=2)

    if dS_T is not None:  # forward (5), only when the final state has a gradient
        dk_T, dv_T, dg_T, dS0_T = _final_state_grads(k, v, G, S0, dS_T)
        dk, dv, dg, dS0 = dk + dk_T, dv + dv_T, dg + dg_T, dS0 + dS0_T
    if reset is not None:  # forward (0): max(g, floor) passes no gradient below the floor
        dg = np.where(reset, 0, dg)
    return dq, dk, dv, dg, (dS0 if has_initial_state else None)


def _final_state_grads(k, v, G, S0, dS_T):
    """The gradients that reach k, v, g and S_0 through the final state (5): (dk, dv, dg, dS0).

    k (B, H, T, K), v (B, H, T, V), G (B, H, T, K), S0 and dS_T (B, H, K, V).
    """
    # forward (5): S_T = diag(exp G_T) S_0 + kE^T v,  kE = k * exp(G_T - G)
    # so:  dv = kE dS_T,  d(kE) = v dS_T^T,  dk = d(kE) * exp(G_T - G),
    #      dS_0 = diag(exp G_T) dS_T; the exponent G_T - G_u = g_{u+1} + ... + g_T gets
    #      kE_u * d(kE)_u, and G_T = g_1 + ... + g_T gets rowsum(dS_T * exp(G_T) S_0)
    G_T = G[:, :, -1]  # (B, H, K)
    decay_to_end = np.exp(G_T[:, :, None, :] - G)  # (B, H, T, K), exponents <= 0
    kE = k * decay_to_end  # (B, H, T, K)
    dkE = v @ np.swapaxes(dS_T, 2, 3)  # (B, H, T, K)
    dv = kE @ dS_T  # (B, H, T, V)
    dk = dkE * decay_to_end
    dS0 = np.exp(G_T)[..., None] * dS_T  # (B, H, K, V)
    kE_dkE = kE * dkE  # (B, H, T, K)
    # every r > u: an exclusive cumsum, built by shifting (cumsum minus the last term, which
    # is O(1) since exp(G_T - G_T) = 1, would cancel away a dg that strong gates make tiny)
    before = np.zeros_like(kE_dkE)  # (B, H, T, K), before[r] = sum_{u < r} kE_dkE[u]
    before[:, :, 1:] = np.cumsum(kE_dkE[:, :, :-1], axis=2)
    through_S0 = np.einsum("bhkv,bhkv->bhk", dS_T, np.exp(G_T)[..., None] * S0)  # (B, H, K)
    dg = before + through_S0[:, :, None]  # (B, H, T, K)
    return dk, dv, dg, dS0
