"""The GLA layer: the token mixer of a block, with its pre-norm, dropout and residual.

Over ``gla_attention`` (the core) it adds everything that turns model width D into heads and
back, as fla's ``GatedLinearAttention`` layer does. As in fla, the q, k, v, output-gate and
output projections have no bias; the gate's second projection has one (b2, fla's ``gk_proj``),
and so does the pre-norm when it is LayerNorm:

    xn = Norm(x)                                            (1) pre-norm (RMSNorm or LayerNorm)
    q = xn W_q,  k = xn W_k   (H*K)     v = xn W_v  (H*V)   (2) optional: SiLU(short conv) on each
    g = gate(xn)                       (H, K), g <= 0       (3) see gla_np.gate
    o = core(q, k, v, g)               per head             (4)-(6) heads first, scale K^-1/2 on q
    u = RMSNorm_V(o) * swish(xn W_r)   (H*V)                (7)-(9) output norm and output gate
    out = x + dropout(u W_o)           (D)                  (10)-(11)

(The numbers are those of docs/derivations/layers/gla-layer.md, which writes each step on its own
line.) K is ``config.head_dim`` and V is ``config.value_head_dim`` (None: V = K, as in Edifice).
q, k and the gate are H*K wide; v, the output gate and the output norm are H*V wide. fla's
released models have K = V/2 (``expand_k=0.5, expand_v=1``).

The output norm (7) is RMSNorm over each head's V values with one weight of size V shared by all
heads, as in fla. The paper uses LayerNorm per head; we follow fla because it is what trained GLA
checkpoints use, it has no bias to fight the output gate, and it is one op fewer to read. Its eps
is the model's ``config.norm_eps``, as fla's GLA model passes its ``norm_eps`` (default 1e-6) to
this norm; ``config.o_norm_eps`` asks for another value (fla's layer built on its own uses 1e-5).

``step`` is the same layer for one position with a carried state (streaming inference); it
shares the projection and output helpers with ``forward`` and runs ``recurrent.step`` as core.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from gla_np.layers import gate, short_conv
from gla_np.layers._params import (check_input, check_params, check_upstream, norm_backward,
                            norm_forward, norm_init, norm_shapes, normal, put, take)
from gla_np.ops import dropout, linear, rmsnorm, swish
from gla_np.recurrence import recurrent
from gla_np.recurrence.attention import gla_attention, gla_attention_backward

QKV = ("q", "k", "v")


def head_sizes(config):
    """``(H, K, V)``: heads, key size per head (``head_dim``), value size per head."""
    V = config.head_dim if config.value_head_dim is None else config.value_head_dim
    return config.num_heads, config.head_dim, V


def output_norm_eps(config):
    """The eps of the per-head output norm (7): ``o_norm_eps``, or else ``norm_eps``."""
    return config.norm_eps if config.o_norm_eps is None else config.o_norm_eps


def param_shapes(config):
    """Every parameter's name and shape, in ``init_params`` order."""
    (H, K, V), D, W = head_sizes(config), config.hidden_size, config.conv_size
    HK, HV = H * K, H * V  # q, k and the gate are H*K wide; v and the output path H*V
    shapes = {**put(norm_shapes(config.norm, D), "norm."), "W_q": (D, HK), "W_k": (D, HK),
              "W_v": (D, HV)}
    if config.use_short_conv:
        shapes.update({"conv_q": (W, HK), "conv_k": (W, HK), "conv_v": (W, HV)})
    shapes.update(put(gate.param_shapes(config.gate, D, H, K, config.gate_rank), "gate."))
    shapes.update({"W_r": (D, HV), "o_norm.w": (V,), "W_o": (HV, D)})
    return shapes


def init_params(config, rng):
    """The layer's params: linears N(0, 0.02), norm weights 1, gate as ``gate.init_params``."""
    (H, K, V), D = head_sizes(config), config.hidden_size
    dt = np.dtype(config.dtype)
    params = put(norm_init(config.norm, D, dt), "norm.")
    params.update({"W_q": normal(rng, (D, H * K), dt), "W_k": normal(rng, (D, H * K), dt),
                   "W_v": normal(rng, (D, H * V), dt)})
    if config.use_short_conv:
        for n, C in zip(QKV, (H * K, H * K, H * V)):
            params[f"conv_{n}"] = normal(rng, (config.conv_size, C), dt)
    params.update(put(gate.init_params(config.gate, D, H, K, config.gate_rank, dt, rng), "gate."))
    params.update({"W_r": normal(rng, (D, H * V), dt), "o_norm.w": np.ones(V, dtype=dt),
                   "W_o": normal(rng, (H * V, D), dt)})
    return params


class QKVCache(NamedTuple):
    """Children of the q, k, v projections (and their convolutions, None when off)."""

    proj: tuple  # three LinearCache, for q, k, v
    conv: tuple  # three ShortConvCache, or three None
    act: tuple  # three SwishCache (SiLU after the conv), or three None


def _qkv_forward(params, xn, config, prefixes=None):
    """q, k, v token-major ``(B, T, H, K|V)`` from xn ``(B, T, D)``; plus conv prefixes out."""
    B, T, _ = xn.shape
    outs, proj, conv, act, new_prefixes = [], [], [], [], []
    for i, n in enumerate(QKV):
        z, c_proj = linear.forward(xn, params[f"W_{n}"])  # (B, T, H*K) or (B, T, H*V)
        c_conv = c_act = None
        if config.use_short_conv:
            pre = None if prefixes is None else prefixes[i]
            z, c_conv = short_conv.forward(z, params[f"conv_{n}"], pre)
            new_prefixes.append(short_conv.new_prefix(c_conv))
            z, c_act = swish.forward(z)  # fla: SiLU after the convolution
        outs.append(z.reshape(B, T, config.num_heads, -1))  # (B, T, H, K|V)
        proj.append(c_proj), conv.append(c_conv), act.append(c_act)
    return outs, QKVCache(tuple(proj), tuple(conv), tuple(act)), new_prefixes


def _qkv_backward(dq, dk, dv, cache):
    """Gradients of ``_qkv_forward``: the three dxn terms and the param grads."""
    dxns, grads = [], {}
    for n, d, c_proj, c_conv, c_act in zip(QKV, (dq, dk, dv), *cache):
        dz = d.reshape(d.shape[0], d.shape[1], -1)  # (B, T, H*K|V)
        if c_conv is not None:
            # forward: z = SiLU(conv(xn W))
            dz = swish.backward(dz, c_act)
            dz, grads[f"conv_{n}"], _ = short_conv.backward(dz, c_conv)
        # forward: z = xn W   so: dxn = dz W^T,  dW = xn^T dz
        dxn, grads[f"W_{n}"], _ = linear.backward(dz, c_proj)
        dxns.append(dxn)
    return dxns, grads


class OutCache(NamedTuple):
    """Children of the output path (7)-(10) before dropout, and the two factors of the product."""

    o_norm: Any  # RMSNormCache over (B, T, H, V)
    r_proj: Any  # LinearCache of xn W_r
    r_act: Any  # SwishCache
    on: np.ndarray  # (B, T, H*V): RMSNorm_V(o), flattened over heads
    sr: np.ndarray  # (B, T, H*V): swish(xn W_r)
    o_proj: Any  # LinearCache of u W_o


def _out_forward(params, o_tok, xn, eps):
    """(7)-(9) and the projection (10): o_tok (B, T, H, V), xn (B, T, D) -> (B, T, D)."""
    B, T, H, V = o_tok.shape
    on, c_onorm = rmsnorm.forward(o_tok, params["o_norm.w"], eps)  # per head, shared w
    on = on.reshape(B, T, H * V)
    r, c_r = linear.forward(xn, params["W_r"])  # (B, T, H*V)
    sr, c_act = swish.forward(r)
    y, c_o = linear.forward(on * sr, params["W_o"])  # (B, T, D)
    return y, OutCache(c_onorm, c_r, c_act, on, sr, c_o)


def _out_backward(dy, c):
    """Gradients of ``_out_forward``: do_tok (B, T, H, V), the output gate's dxn, param grads."""
    # forward: y = u W_o   so: du = dy W_o^T,  dW_o = u^T dy
    du, dW_o, _ = linear.backward(dy, c.o_proj)
    # forward: u = on * sr   so: don = du * sr,  dsr = du * on (don into du, our own array)
    dsr = du * c.on
    don = du
    don *= c.sr
    # forward: sr = swish(r),  r = xn W_r   so: dr = swish'(r) dsr,  dxn_out_gate = dr W_r^T
    dr = swish.backward(dsr, c.r_act)
    dxn_out_gate, dW_r, _ = linear.backward(dr, c.r_proj)
    # forward: on = RMSNorm_V(o_tok) per head, flattened   so: do_tok = RMSNorm_V'(don unflattened)
    do_tok, dw_onorm = rmsnorm.backward(don.reshape(c.o_norm.x_hat.shape), c.o_norm)
    return do_tok, dxn_out_gate, {"W_r": dW_r, "o_norm.w": dw_onorm, "W_o": dW_o}


class GLALayerCache(NamedTuple):
    """Children by name. The core's cache is whatever its form keeps (the chunked form keeps
    chunk-boundary states and recomputes inside chunks); everything else stores its inputs."""

    norm: Any  # NormCache of (1)
    qkv: QKVCache  # (2)
    gate: Any  # GateCache (3)
    core: Any  # cache of gla_attention (5)
    out: OutCache  # (7)-(10)
    drop: Any  # DropoutCache (11)


def forward(params, x, config, *, training=False, rng=None):
    """One GLA layer with residual: x (B, T, D) -> out (B, T, D). Returns ``(out, cache)``.

    ``config`` supplies the sizes and options (a ``GLAConfig``; D = ``config.hidden_size``).
    ``params`` must hold every name of ``param_shapes(config)``. Dropout is active only with
    ``training=True``, drawing from ``rng``.
    """
    x = check_input("x", x, config.hidden_size, config.dtype)
    check_params(params, param_shapes(config), config.dtype)
    H, K = config.num_heads, config.head_dim
    xn, c_norm = norm_forward(take(params, "norm."), x, config.norm, config.norm_eps)
    (q, k, v), c_qkv, _ = _qkv_forward(params, xn, config)  # (B, T, H, K|V)
    g, c_gate = gate.forward(take(params, "gate."), xn, kind=config.gate, num_heads=H,
                             head_dim=K, normalizer=config.gate_normalizer)  # (B, T, H, K)
    # fla's kernels take (B, T, H, K); our core is head-major (B, H, T, K): swap T and H.
    heads = [a.transpose(0, 2, 1, 3) for a in (q, k, v, g)]
    chunking = {"chunk_size": config.chunk_size} if config.form == "chunk" else {}
    # (5) with no final state: nothing here reads S_T, so the core does not compute it
    o, _, c_core = gla_attention(*heads, form=config.form, output_final_state=False, **chunking)
    y, c_out = _out_forward(params, o.transpose(0, 2, 1, 3), xn, output_norm_eps(config))
    # (11): dropout is not called where it is the identity (no copy: y is our own array)
    if dropout.is_identity(config.dropout, training):
        yd, c_drop = y, dropout.identity_cache(y, config.dropout)
    else:
        yd, c_drop = dropout.forward(y, config.dropout, rng, training)
    out = yd
    out += x  # out = x + dropout(y), into yd: an array made here (y, or dropout's new output)
    return out, GLALayerCache(c_norm, c_qkv, c_gate, c_core, c_out, c_drop)


def backward(dout, cache):
    """Return ``(dx, grads)``, grads keyed like params. Derivation:
    docs/derivations/layers/gla-layer.md

        dy = dropout'(dout);      du = dy W_o^T
        don = du * sr;            dr = swish'(r) (du * on);     do = RMSNorm_V'(don)
        dq, dk, dv, dg = core'(do)                              (heads swapped back)
        dz_n = dn;  short conv on: dz_n = conv_n'(SiLU'(c_n) dn), c_n = conv_n(z_n)
        dxn = dz_q W_q^T + dz_k W_k^T + dz_v W_v^T + gate'(dg) + dr W_r^T
        dx = dout + Norm'(dxn)

    ``dout`` None means zero; otherwise it must have the output's shape and dtype.
    """
    c = cache
    dout = check_upstream("dout", dout, c.drop.x_shape, c.drop.x_dtype)
    # forward: out = x + dropout(y)   so: dy = dropout'(dout) (the residual's dout comes last);
    # dy = dout itself where dropout is the identity (read only below)
    dy = dout if c.drop.keep is None else dropout.backward(dout, c.drop)
    do_tok, dxn_out_gate, grads = _out_backward(dy, c.out)
    # forward: o = core(q, k, v, g) on (B, H, T, .)   so: core'(do), no gradient on S_T
    dq, dk, dv, dg, _ = gla_attention_backward(do_tok.transpose(0, 2, 1, 3), None, c.core)
    dq, dk, dv, dg = [a.transpose(0, 2, 1, 3) for a in (dq, dk, dv, dg)]  # back to (B, T, H, .)
    # forward: g = gate(xn)   so: dxn_gate = gate'(dg)
    dxn_gate, g_grads = gate.backward(dg, c.gate)
    # forward: q, k, v = xn W_q, xn W_k, xn W_v (each through SiLU(conv) if on)   so: three dxn
    (dxn_q, dxn_k, dxn_v), qkv_grads = _qkv_backward(dq, dk, dv, c.qkv)
    # xn fed five projections: dxn = dxn_q + dxn_k + dxn_v + dxn_gate + dxn_out_gate, summed
    # in that order into dxn_q (linear's new array)
    dxn = dxn_q
    for term in (dxn_k, dxn_v, dxn_gate, dxn_out_gate):
        dxn += term
    # forward: xn = Norm(x)   so: dx_norm = Norm'(dxn)
    dx_norm, n_grads = norm_backward(dxn, c.norm)
    dx = dx_norm
    dx += dout  # x fed the residual and the norm: dx = dout + dx_norm, in the norm's new array
    grads.update(qkv_grads)
    grads.update(put(g_grads, "gate."))
    grads.update(put(n_grads, "norm."))
    return dx, grads


class LayerState(NamedTuple):
    """What the layer carries between positions when streaming: constant size in T."""

    S: np.ndarray  # (B, H, K, V): the recurrent state of every head
    conv: tuple  # three (B, W-1, C) input buffers for the q, k, v convolutions, or ()


def init_state(config, batch):
    """The state before the first token: zeros."""
    H, K, V = head_sizes(config)
    dt = np.dtype(config.dtype)
    conv = ()
    if config.use_short_conv:
        conv = tuple(np.zeros((batch, config.conv_size - 1, C), dtype=dt)
                     for C in (H * K, H * K, H * V))
    return LayerState(np.zeros((batch, H, K, V), dtype=dt), conv)


def step(params, x_t, state, config):
    """One position, x_t (B, D) -> (y_t (B, D), new_state). Inference: no dropout, no cache.

    ``params`` are not checked here, so that streaming does not re-check every weight at every
    layer of every token: ``model.step`` and the ``edifice`` holders check them once per call.
    """
    x = check_input("x_t", x_t, config.hidden_size, config.dtype, step=True)[:, None]  # (B, 1, D)
    if not isinstance(state, LayerState) or state.S.shape[0] != x.shape[0]:
        raise ValueError(f"state: expected a LayerState from init_state(config, {x.shape[0]}), "
                         f"got {type(state).__name__}")
    H, K = config.num_heads, config.head_dim
    xn, _ = norm_forward(take(params, "norm."), x, config.norm, config.norm_eps)
    (q, k, v), _, conv = _qkv_forward(params, xn, config, state.conv or None)  # (B, 1, H, .)
    g, _ = gate.forward(take(params, "gate."), xn, kind=config.gate, num_heads=H, head_dim=K,
                        normalizer=config.gate_normalizer)
    o_t, S = recurrent.step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], state.S)  # (B, H, V)
    y, _ = _out_forward(params, o_t[:, None], xn, output_norm_eps(config))
    return (x + y)[:, 0], LayerState(S, tuple(conv))
