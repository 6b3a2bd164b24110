"""The gated linear recurrence, step by step: the definition of GLA's token mixer.

Each head keeps a state S (K x V). At every position it first decays the state row by row with
the forget gate a_t = exp(g_t), then writes the outer product k_t v_t^T, then reads it with the
scaled query (fla's ``naive_recurrent_gla`` order: decay, write, read):

    S_t = diag(a_t) S_{t-1} + k_t v_t^T        (1)
    o_t = scale * S_t^T q_t                    (2)

This module is the reference the other forms are checked against: ``parallel`` writes the same
map as attention with a decay mask, ``chunked`` as the paper's chunkwise algorithm. It loops over
time (vectorised over batch and heads) and is the streaming form for inference (``step``).

Shapes are head-major: q, k, g ``(B, H, T, K)``; v, o ``(B, H, T, V)``; states ``(B, H, K, V)``.
(fla uses ``(B, T, H, K)``; the layer does the transpose.) g is the log forget gate, g <= 0;
g = -inf is a hard reset (decay exactly 0), and so is any g below the dtype's floor
(``_gla_inputs.LOG_GATE_FLOOR``): exp rounds it to 0.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gla_np._checks import check_bool
from gla_np.recurrence._gla_inputs import (check_cache, check_gla_inputs, check_gla_step_inputs,
                                check_gla_upstream, floor_log_gates)


def _step(q_t, k_t, v_t, g_t, state, scale):
    """One position of (1)-(2), unchecked: decay, write, read."""
    a_t = np.exp(g_t)  # (B, H, K), in (0, 1]
    new_state = a_t[..., :, None] * state + k_t[..., :, None] * v_t[..., None, :]  # (B, H, K, V)
    o_t = np.einsum("bhk,bhkv->bhv", scale * q_t, new_state)
    return o_t, new_state


def step(q_t, k_t, v_t, g_t, state, *, scale=None):
    """Advance the recurrence by one position: return ``(o_t, new_state)``.

    For streaming inference: q_t, k_t, g_t ``(B, H, K)``, v_t ``(B, H, V)``, state
    ``(B, H, K, V)`` (``None`` means zeros, the state before the first token). Memory is constant
    in the sequence length. Forward only; ``forward`` runs the same ``_step`` in its loop.
    """
    B, H, K, V, scale = check_gla_step_inputs(q_t, k_t, v_t, g_t, state, scale)
    if state is None:
        state = np.zeros((B, H, K, V), dtype=q_t.dtype)
    return _step(q_t, k_t, v_t, g_t, state, scale)


class RecurrentCache(NamedTuple):
    """What ``backward`` needs. Stores every state S_0..S_T, so it recomputes nothing: the direct
    gate gradient dg_t = a_t * rowsum(S^_t * S_{t-1}) needs S_{t-1} at every step, and the
    reference form prefers clarity to memory (O(T K V) per head; the chunked form keeps only
    chunk-boundary states)."""

    q: np.ndarray  # (B, H, T, K)
    k: np.ndarray  # (B, H, T, K)
    v: np.ndarray  # (B, H, T, V)
    g: np.ndarray  # (B, H, T, K), floored (finite); a reset gate has exp(g) = 0, so dg = 0
    states: np.ndarray  # (B, H, T + 1, K, V), states[:, :, t] = S_t, states[:, :, 0] = S_0
    scale: float  # s, multiplies q
    has_initial_state: bool  # False: S_0 was zeros and backward returns d_initial_state = None


def forward(q, k, v, g, *, scale=None, initial_state=None, output_final_state=True):
    """Run the recurrence over the sequence: return ``(o, final_state, cache)``.

    o ``(B, H, T, V)``, final_state S_T ``(B, H, K, V)``; scale defaults to K ** -0.5 and
    multiplies q; initial_state S_0 defaults to zeros. Outputs keep the input dtype.
    ``output_final_state=False`` returns None for S_T (the loop makes it anyway: o_T reads it;
    the cache keeps it as always).
    """
    B, H, T, K, V, scale = check_gla_inputs(q, k, v, g, initial_state, scale)
    output_final_state = check_bool("output_final_state", output_final_state)
    g, _ = floor_log_gates(g)  # (0) exact: a gate below the floor has exp(g) = 0 either way
    states = np.empty((B, H, T + 1, K, V), dtype=q.dtype)
    states[:, :, 0] = 0.0 if initial_state is None else initial_state
    o = np.empty((B, H, T, V), dtype=q.dtype)
    for t in range(T):
        o[:, :, t], states[:, :, t + 1] = _step(q[:, :, t], k[:, :, t], v[:, :, t], g[:, :, t],
                                                states[:, :, t], scale)
    cache = RecurrentCache(q, k, v, g, states, scale, initial_state is not None)
    return o, states[:, :, T].copy() if output_final_state else None, cache


def backward(do, d_final_state, cache):
    """Backpropagation through time: return ``(dq, dk, dv, dg, d_initial_state)``.

    With S^_t the gradient on S_t from everything downstream of it
    (docs/derivations/recurrence/recurrent.md):

        S^_T = d_final_state + scale * q_T do_T^T
        S^_t = diag(a_{t+1}) S^_{t+1} + scale * q_t do_t^T
        dq_t = scale * S_t do_t      dk_t = S^_t v_t      dv_t = S^_t^T k_t
        dg_t = a_t * rowsum(S^_t * S_{t-1})              d_initial_state = diag(a_1) S^_1

    ``do=None`` or ``d_final_state=None`` mean zero. ``d_initial_state`` is None when the
    forward had no initial state. A ``d_final_state`` is taken whether or not the forward
    returned S_T: it is the same function of the inputs either way.
    """
    q, k, v, g, states, scale, has_initial_state = check_cache(cache, RecurrentCache,
                                                               "recurrent.forward")
    B, H, T, K = q.shape
    V = v.shape[3]
    do, d_final_state = check_gla_upstream(do, d_final_state, B, H, T, K, V, q.dtype)
    dq, dk, dg = np.empty_like(q), np.empty_like(k), np.empty_like(g)
    dv = np.empty_like(v)
    # dS: the gradient on S_t arriving from S_{t+1} and from d_final_state, before step t's read.
    dS = np.zeros((B, H, K, V), dtype=q.dtype) if d_final_state is None else d_final_state
    for t in reversed(range(T)):
        S_prev, S_t = states[:, :, t], states[:, :, t + 1]  # S_{t-1}, S_t in 1-based math
        # forward (2): o_t = scale * S_t^T q_t
        # so:  S^_t = dS + scale * q_t do_t^T,  dq_t = scale * S_t do_t
        S_hat = dS + scale * q[:, :, t, :, None] * do[:, :, t, None, :]  # (B, H, K, V)
        dq[:, :, t] = scale * np.einsum("bhkv,bhv->bhk", S_t, do[:, :, t])
        # forward (1): S_t = diag(a_t) S_{t-1} + k_t v_t^T
        # so:  dk_t = S^_t v_t,  dv_t = S^_t^T k_t,  da_t = rowsum(S^_t * S_{t-1}),
        #      dg_t = a_t * da_t,  dS_{t-1} = diag(a_t) S^_t
        a_t = np.exp(g[:, :, t])  # (B, H, K)
        dk[:, :, t] = np.einsum("bhkv,bhv->bhk", S_hat, v[:, :, t])
        dv[:, :, t] = np.einsum("bhkv,bhk->bhv", S_hat, k[:, :, t])
        dg[:, :, t] = a_t * np.einsum("bhkv,bhkv->bhk", S_hat, S_prev)
        dS = a_t[..., None] * S_hat
    d_initial_state = dS if has_initial_state else None
    return dq, dk, dv, dg, d_initial_state
