"""Small float32 GLA kernels as a kernel author would write them, in fla's (B, T, H, K) layout:
correct ones, and the four planted bugs that gla_np.testing and the golden cases must catch.

Each kernel is ``kernel(q, k, v, g, S0, do, dS_T, scale) -> dict`` of whichever of o,
final_state, dq, dk, dv, dg, d_initial_state it computes (S0, do, dS_T may be None).

* ``stable_recurrent``: correct, independent of gla_np's forms: a loop over time with the
  direct state gradient, dg by the gate identity (a reverse cumulative sum over the whole
  sequence plus the final-state term, the way fla computes it).
* ``gla_np_chunked(C)``: correct, gla_np's chunked form run in float32 through the BTHK layout.
* ``decay_after_write``: S_t = diag(a_t) (S_{t-1} + k_t v_t^T), the write decayed too.
* ``dg_without_final_state``: the gate identity without rowsum(S_T * dS_T).
* ``naive_factoring``: intra-chunk scores as (q exp b) (k exp(-b))^T over chunks of 64.
* ``scale_on_k``: forward right, backward derived as if the scale multiplied k.
"""

import numpy as np

from gla_np import gla_attention, gla_attention_backward


def _loop(q, k, v, g, S0, scale, decay_after_write=False):
    """Forward loop in (B, T, H, K); returns o and the states S_0..S_T (B, T+1, H, K, V)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    S = np.zeros((B, H, K, V), q.dtype) if S0 is None else S0.copy()
    states, o = [S], np.empty((B, T, H, V), q.dtype)
    for t in range(T):
        a = np.exp(g[:, t])[..., None]  # (B, H, K, 1)
        write = k[:, t, :, :, None] * v[:, t, :, None, :]
        S = a * (S + write) if decay_after_write else a * S + write
        o[:, t] = scale * np.einsum("bhk,bhkv->bhv", q[:, t], S)
        states.append(S)
    return o, states


def _loop_backward(q, k, v, g, states, do, dS_T, scale):
    """dq, dk, dv, dS_0 of the loop (B, T, H, K); dg is left to the gate identity."""
    B, T, H, K = q.shape
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    dS = np.zeros_like(states[0]) if dS_T is None else dS_T.copy()
    do = np.zeros_like(v) if do is None else do
    for t in reversed(range(T)):
        S_hat = dS + scale * q[:, t, :, :, None] * do[:, t, :, None, :]
        dq[:, t] = scale * np.einsum("bhkv,bhv->bhk", states[t + 1], do[:, t])
        dk[:, t] = np.einsum("bhkv,bhv->bhk", S_hat, v[:, t])
        dv[:, t] = np.einsum("bhkv,bhk->bhv", S_hat, k[:, t])
        dS = np.exp(g[:, t])[..., None] * S_hat
    return dq, dk, dv, dS


def _identity_dg(q, dq, k, dk, S_T, dS_T, final_state_term=True):
    """dg = reverse cumsum over time of (q dq - k dk) + rowsum(S_T * dS_T), in float32."""
    x = q * dq - k * dk  # (B, T, H, K)
    dg = np.flip(np.cumsum(np.flip(x, 1), 1), 1)
    if dS_T is not None and final_state_term:
        dg = dg + np.einsum("bhkv,bhkv->bhk", S_T, dS_T)[:, None]
    return dg


def stable_recurrent(q, k, v, g, S0, do, dS_T, scale, *, bug=None):
    g = np.maximum(g, np.float32(-128))  # hard resets: exp(-128) = 0 in float32, exactly
    o, states = _loop(q, k, v, g, S0, scale, decay_after_write=(bug == "decay_after_write"))
    out = dict(o=o, final_state=states[-1])
    if do is None and dS_T is None:
        return out
    if bug == "scale_on_k":
        # the backward of o = f(q, s k) read with scale 1: the intra terms agree, the terms
        # through S_0 and S_T do not
        sk = np.float32(scale) * k
        _, states_k = _loop(q, sk, v, g, S0, np.float32(1))
        dq, dsk, dv, dS0 = _loop_backward(q, sk, v, g, states_k, do, dS_T, np.float32(1))
        dk = np.float32(scale) * dsk
        dg = _identity_dg(q, dq, sk, dsk, states_k[-1], dS_T)
    else:
        dq, dk, dv, dS0 = _loop_backward(q, k, v, g, states, do, dS_T, scale)
        dg = _identity_dg(q, dq, k, dk, states[-1], dS_T,
                          final_state_term=(bug != "dg_without_final_state"))
    out.update(dq=dq, dk=dk, dv=dv, dg=dg)
    if S0 is not None:
        out["d_initial_state"] = dS0
    return out


def gla_np_chunked(C):
    def kernel(q, k, v, g, S0, do, dS_T, scale):
        o, S_T, cache = gla_attention(q, k, v, g, form="chunk", chunk_size=C, scale=scale,
                                      initial_state=S0, layout="BTHK")
        out = dict(o=o, final_state=S_T)
        if do is not None or dS_T is not None:
            dq, dk, dv, dg, dS0 = gla_attention_backward(do, dS_T, cache)
            out.update(dq=dq, dk=dk, dv=dv, dg=dg)
            if S0 is not None:
                out["d_initial_state"] = dS0
        return out
    kernel.__name__ = f"gla_np_chunked_{C}"
    return kernel


def naive_factoring(q, k, v, g, S0, do, dS_T, scale, C=64):
    """Forward only: within each chunk, A = (s q exp b) (k exp(-b))^T, masked afterwards."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    S = np.zeros((B, H, K, V), q.dtype) if S0 is None else S0.copy()
    o = np.empty((B, T, H, V), q.dtype)
    with np.errstate(all="ignore"):
        for c in range(0, T, C):
            rows = slice(c, min(c + C, T))
            qc, kc, vc = (np.swapaxes(x[:, rows], 1, 2) for x in (q, k, v))  # (B, H, n, .)
            b = np.cumsum(np.swapaxes(g[:, rows], 1, 2), axis=2)  # (B, H, n, K)
            q_dec, k_inv = scale * qc * np.exp(b), kc * np.exp(-b)
            n = b.shape[2]
            A = np.where(np.tril(np.ones((n, n), bool)), q_dec @ np.swapaxes(k_inv, 2, 3), 0)
            o[:, rows] = np.swapaxes(A @ vc + q_dec @ S, 1, 2)
            last = b[:, :, -1:, :]  # (B, H, 1, K)
            S = np.exp(last[:, :, 0, :, None]) * S + np.swapaxes(
                kc * np.exp(last - b), 2, 3) @ vc
    return dict(o=o, final_state=S)


def decay_after_write(*args):
    return stable_recurrent(*args, bug="decay_after_write")


def dg_without_final_state(*args):
    return stable_recurrent(*args, bug="dg_without_final_state")


def scale_on_k(*args):
    return stable_recurrent(*args, bug="scale_on_k")


CORRECT = [stable_recurrent, gla_np_chunked(16), gla_np_chunked(32), gla_np_chunked(64)]
PLANTED = [decay_after_write, dg_without_final_state, naive_factoring, scale_on_k]
