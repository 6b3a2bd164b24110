"""Small GLA kernels as a kernel author would write them (float32, or float64 given float64
inputs), in fla's (B, T, H, K) layout:
correct ones, and the five planted bugs that gla_np.testing and the golden cases must catch.

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
* ``ignores_scale``: takes K ** -0.5 whatever scale it is given.
* ``chunked_kernel(C)``: correct, a chunked kernel (forward and backward, dg as chunked.md B5)
  written from the equations, independent of gla_np's code; ``tf32=True`` rounds its matmul
  inputs to TF32; two dg bugs of a B5 port (``DG_BUGS``).

Each kernel carries ``chunk_size`` and ``dg_identity``: how gla_np.testing must judge it.
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
    """dg = reverse cumsum over time of (q dq - k dk) + rowsum(S_T * dS_T), in their dtype."""
    x = q * dq - k * dk  # (B, T, H, K)
    dg = np.flip(np.cumsum(np.flip(x, 1), 1), 1)
    if dS_T is not None and final_state_term:
        dg = dg + np.einsum("bhkv,bhkv->bhk", S_T, dS_T)[:, None]
    return dg


def stable_recurrent(q, k, v, g, S0, do, dS_T, scale, *, bug=None):
    # hard resets: exp of the floor is 0 exactly (float32: -128, float64: -1024)
    g = np.maximum(g, g.dtype.type(-128 if g.dtype == np.float32 else -1024))
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
    kernel.chunk_size, kernel.dg_identity = C, False
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


def ignores_scale(q, k, v, g, S0, do, dS_T, scale):
    """Uses the default K ** -0.5 whatever scale it is given."""
    return stable_recurrent(q, k, v, g, S0, do, dS_T, np.float32(q.shape[-1] ** -0.5))




# --- an independent chunked kernel: forward and backward, dg as in chunked.md B5 -----------

def round_to_tf32(x):
    """float32 values rounded to TF32's 10 explicit mantissa bits (to nearest, ties to even),
    still float32: what a TF32 tensor core reads of a matmul input. (float32 inputs only.)"""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    one, half, low = np.uint64(1), np.uint64(0xFFF), np.uint64(0x1FFF)
    bits = (bits + half + ((bits >> np.uint64(13)) & one)) & ~low
    return bits.astype(np.uint32).view(np.float32)


def chunked_kernel(C, *, tf32=False, bug=None):
    """A chunked GLA kernel written from the chunk form's equations, not from gla_np's code:
    per chunk the (C, C, K) decays exp(b_t - b_u) of every pair u <= t at once (exponents
    masked to -inf above the diagonal before exp), the state passed between chunks, and dg as
    chunked.md B5 (past pairs apart from the self pairs, writes before r, the carry).
    ``tf32=True`` rounds every matmul input to TF32. Bugs: "plain_identity" (dg as one reverse
    cumulative sum of q dq - k dk over the sequence, as fla does), "exclusive_by_subtraction"
    (B5's sum over the writes before r taken as the inclusive sum minus the own term)."""
    mm = round_to_tf32 if tf32 else (lambda x: x)

    def forward(q, k, v, g, *, scale, initial_state):
        q, k, v, g = (np.ascontiguousarray(np.swapaxes(x, 1, 2)) for x in (q, k, v, g))
        g = np.maximum(g, g.dtype.type(-128 if g.dtype == np.float32 else -1024))  # resets
        B, H, T, K = q.shape
        s = q.dtype.type(scale)
        S = np.zeros((B, H, K, v.shape[3]), q.dtype) if initial_state is None \
            else initial_state.astype(q.dtype)
        o, states = np.empty_like(v), []
        for c in range(0, T, C):
            rows = slice(c, min(c + C, T))
            qc, kc, vc = q[:, :, rows], k[:, :, rows], v[:, :, rows]
            b = np.cumsum(g[:, :, rows], axis=2)
            n = b.shape[2]
            W = _pair_decays(b)  # (B, H, n, n, K)
            A = s * np.einsum("bhtk,bhuk,bhtuk->bhtu", mm(qc), mm(kc), W)
            o[:, :, rows] = mm(s * qc * np.exp(b)) @ mm(S) + mm(A) @ mm(vc)
            states.append(S)
            l = b[:, :, -1]  # (B, H, K)
            S = np.exp(l)[..., None] * S + np.swapaxes(mm(kc * np.exp(l[:, :, None] - b)),
                                                       2, 3) @ mm(vc)
        ctx = (q, k, v, g, s, states, S, initial_state is not None)
        return np.swapaxes(o, 1, 2), S, ctx

    def backward(do, dS_T, ctx):
        q, k, v, g, s, states, S_T, has_S0 = ctx
        B, H, T, K = q.shape
        do = np.zeros_like(v) if do is None else np.ascontiguousarray(np.swapaxes(do, 1, 2))
        E = np.zeros_like(S_T) if dS_T is None else dS_T.astype(S_T.dtype)
        dq, dk, dv, dg = (np.empty_like(x) for x in (q, k, v, g))
        dq_full, dk_full = np.empty_like(q), np.empty_like(k)
        for i, c in reversed(list(enumerate(range(0, T, C)))):
            rows = slice(c, min(c + C, T))
            qc, kc, vc, doc, S = q[:, :, rows], k[:, :, rows], v[:, :, rows], do[:, :, rows], \
                states[i]
            b = np.cumsum(g[:, :, rows], axis=2)
            n = b.shape[2]
            l = b[:, :, -1]
            W = _pair_decays(b, past_only=True)  # u < t
            A_past = s * np.einsum("bhtk,bhuk,bhtuk->bhtu", mm(qc), mm(kc), W)
            A_self = s * np.einsum("bhtk,bhtk->bht", qc, kc)
            dA = mm(doc) @ np.swapaxes(mm(vc), 2, 3)  # (B, H, n, n)
            dA_self = np.einsum("bhtv,bhtv->bht", doc, vc)
            dq_inter = s * np.exp(b) * (mm(doc) @ np.swapaxes(mm(S), 2, 3))
            dq_past = s * np.einsum("bhtu,bhtuk,bhuk->bhtk", mm(dA), W, mm(kc))
            dk_past = s * np.einsum("bhtu,bhtuk,bhtk->bhuk", mm(dA), W, mm(qc))
            decay_out = np.exp(l[:, :, None] - b)  # exp(l - b_u)
            dk_state = decay_out * (mm(vc) @ np.swapaxes(mm(E), 2, 3))
            dq[:, :, rows] = dq_inter + dq_past + s * dA_self[..., None] * kc
            dk[:, :, rows] = dk_state + dk_past + s * dA_self[..., None] * qc
            dv[:, :, rows] = (np.swapaxes(mm(A_past), 2, 3) @ mm(doc)
                              + A_self[..., None] * doc
                              + mm(kc * decay_out) @ mm(E))
            x = qc * (dq_inter + dq_past) - kc * dk_past
            rev = np.flip(np.cumsum(np.flip(x, 2), 2), 2)
            writes = kc * dk_state
            if bug == "exclusive_by_subtraction":
                before = np.cumsum(writes, axis=2) - writes
            else:
                before = np.concatenate([np.zeros_like(writes[:, :, :1]),
                                         np.cumsum(writes[:, :, :-1], axis=2)], axis=2)
            carried = np.exp(l) * np.einsum("bhkv,bhkv->bhk", S, E)
            dg[:, :, rows] = rev + before + carried[:, :, None]
            E = np.exp(l)[..., None] * E + np.swapaxes(mm(s * qc * np.exp(b)), 2, 3) @ mm(doc)
        if bug == "plain_identity":
            dg = _identity_dg(*(np.swapaxes(x, 1, 2) for x in (q, dq, k, dk)), S_T, dS_T)
            dg = np.swapaxes(dg, 1, 2)
        grads = [np.swapaxes(x, 1, 2) for x in (dq, dk, dv, dg)]
        return (*grads, E if has_S0 else None)

    forward.__name__ = backward.__name__ = f"chunked_kernel_{C}" + ("_tf32" if tf32 else "") \
        + (f"_{bug}" if bug else "")
    forward.chunk_size = C
    return forward, backward


def _pair_decays(b, past_only=False):
    """exp(b_t - b_u) for u <= t (u < t with past_only), 0 elsewhere: (B, H, n, n, K), the
    exponent masked before exp."""
    n = b.shape[2]
    keep = np.tril(np.ones((n, n), bool), k=-1 if past_only else 0)[:, :, None]
    with np.errstate(invalid="ignore"):
        log_w = np.where(keep, b[:, :, :, None, :] - b[:, :, None, :, :], -np.inf)
    return np.exp(log_w)


def as_kernel(forward, backward):
    """The forward/backward pair as a planted-kernel dict function (fla layout)."""
    def kernel(q, k, v, g, S0, do, dS_T, scale):
        o, S_T, ctx = forward(q, k, v, g, scale=scale, initial_state=S0)
        out = dict(o=o, final_state=S_T)
        if do is not None or dS_T is not None:
            dq, dk, dv, dg, dS0 = backward(do, dS_T, ctx)
            out.update(dq=dq, dk=dk, dv=dv, dg=dg)
            if dS0 is not None:
                out["d_initial_state"] = dS0
        return out
    kernel.__name__ = forward.__name__
    kernel.chunk_size, kernel.dg_identity = forward.chunk_size, False
    return kernel


# How each kernel is judged: its chunk length (1: a loop over time, every step a state step) and
# whether it computes dg by the plain gate identity (the loop kernels do, as fla's do).
for _kernel in (stable_recurrent, decay_after_write, dg_without_final_state, scale_on_k,
                ignores_scale):
    _kernel.chunk_size, _kernel.dg_identity = 1, True
naive_factoring.chunk_size, naive_factoring.dg_identity = 64, False

CORRECT = [stable_recurrent, gla_np_chunked(16), gla_np_chunked(32), gla_np_chunked(64),
           as_kernel(*chunked_kernel(16))]
PLANTED = [decay_after_write, dg_without_final_state, naive_factoring, scale_on_k, ignores_scale]
# dg bugs of a port of chunked.md B5, which only the default dg rule sees at strong gates
DG_BUGS = [as_kernel(*chunked_kernel(16, bug="plain_identity")),
           as_kernel(*chunked_kernel(16, bug="exclusive_by_subtraction"))]
