"""The GLA model: input projection, a stack of blocks, a final norm. Pure functions plus a config.

    h_0 = x W_in + b_in              only when embed_dim != hidden_size (Edifice)     (1)
    h_l = block_l(h_{l-1})           l = 1..num_layers (gla_np.block)                  (2)
    y   = Norm(h_L)[:, -1]           the last position, (B, hidden_size); or all of it (3)

Parameters are one flat dict with dotted names: ``input_proj.W``, ``blocks.0.attn.W_q``,
``blocks.0.ffn.W_up``, ``final_norm.w`` ... (``param_shapes`` lists them all). No name starts
with ``embedding`` or ``head``: a language model adds those around this one.

``init_state`` and ``step`` run the same model one position at a time with a constant-size state
per layer (streaming inference); ``step`` and ``forward(..., return_sequence=True)`` agree.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from typing import Any, NamedTuple

import numpy as np

from gla_np._checks import (check_bool, check_cache, check_choice, check_positive_int,
                            check_positive_real, check_rate)
from gla_np.layers import block, gla_layer
from gla_np.layers._params import (check_input, check_params, check_upstream, norm_backward,
                            norm_forward, norm_init, norm_shapes, normal, put, take)
from gla_np.layers.gate import GATES
from gla_np.ops import linear
from gla_np.recurrence.attention import FORMS

NORMS = ("rmsnorm", "layernorm")
DTYPES = ("float64", "float32")


@dataclasses.dataclass(frozen=True)
class GLAConfig:
    """Every size and option of the model, checked once here (ValueError naming the option).

    Defaults are Edifice's (hidden 256, 6 layers, 4 heads of 64, FFN x2, dropout 0.1, window 60)
    and fla's for what Edifice lacks (gate rank 16, normalizer 16, RMSNorm). ``seq_len`` (default
    ``window_size``) records the length the model is meant for; it is not enforced (see
    docs/edifice.md: nothing is compiled per length, and streaming runs past any length).

    Options for fla's models, each defaulting to what Edifice does:
    ``value_head_dim`` V per head (None: ``head_dim``, so K = V; fla's released models have
    K = V/2); ``intermediate_size`` the FFN's inner width (None: ``hidden_size * expand_factor``);
    ``o_norm_eps`` the eps of the layer's per-head output norm (None: ``norm_eps``, as fla's
    model passes its ``norm_eps`` there); ``tie_word_embeddings`` (token model only,
    ``gla_np.lm``): the output head reuses the embedding matrix.
    """

    embed_dim: int
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 4
    head_dim: int = 64
    expand_factor: int = 2
    dropout: float = 0.1
    window_size: int = 60
    seq_len: int | None = None
    gate: str = "vector"
    gate_rank: int = 16
    gate_normalizer: float = 16
    form: str = "chunk"
    chunk_size: int = 64
    norm: str = "rmsnorm"
    norm_eps: float = 1e-6
    use_short_conv: bool = False
    conv_size: int = 4
    dtype: str = "float64"
    value_head_dim: int | None = None
    intermediate_size: int | None = None
    o_norm_eps: float | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self):
        for name in ("embed_dim", "hidden_size", "num_layers", "num_heads", "head_dim",
                     "expand_factor", "window_size", "gate_rank", "chunk_size", "conv_size"):
            object.__setattr__(self, name, check_positive_int(name, getattr(self, name)))
        seq_len = self.window_size if self.seq_len is None else self.seq_len
        object.__setattr__(self, "seq_len", check_positive_int("seq_len", seq_len))
        object.__setattr__(self, "dropout", check_rate("dropout", self.dropout))
        check_positive_real("gate_normalizer", self.gate_normalizer)
        check_positive_real("norm_eps", self.norm_eps)
        for name in ("value_head_dim", "intermediate_size"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_positive_int(name, getattr(self, name)))
        if self.o_norm_eps is not None:
            check_positive_real("o_norm_eps", self.o_norm_eps)
        check_choice("gate", self.gate, GATES)
        check_choice("form", self.form, FORMS)
        check_choice("norm", self.norm, NORMS)
        for name in ("use_short_conv", "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        dtype = self.dtype
        if not isinstance(dtype, str):
            dtype = np.dtype(dtype).name if dtype in (np.float32, np.float64) else repr(dtype)
        object.__setattr__(self, "dtype", check_choice("dtype", dtype, DTYPES))


def param_shapes(config):
    """Every parameter's name and shape, in init order: the single source of the param count."""
    D = config.hidden_size
    shapes = {}
    if config.embed_dim != D:
        shapes.update({"input_proj.W": (config.embed_dim, D), "input_proj.b": (D,)})
    for i in range(config.num_layers):
        shapes.update(put(block.param_shapes(config), f"blocks.{i}."))
    shapes.update(put(norm_shapes(config.norm, D), "final_norm."))
    return shapes


@functools.lru_cache(maxsize=32)
def _shapes(config):
    """``param_shapes(config)`` made once per config, read-only: forward and step compare the
    params with it on every call (building it anew cost more than the comparison itself)."""
    return types.MappingProxyType(param_shapes(config))


def param_count(config):
    """The exact number of scalars in ``init_params(config, rng)``."""
    return sum(math.prod(s) for s in param_shapes(config).values())


def param_breakdown(config):
    """Scalars per parameter name with the block index dropped (summed over the layers)."""
    counts = {}
    for name, shape in param_shapes(config).items():
        short = name.split(".", 2)[2] if name.startswith("blocks.") else name
        counts[short] = counts.get(short, 0) + math.prod(shape)
    return counts


def init_params(config, rng):
    """Fresh params (fla's init): linears N(0, 0.02), biases 0, norm weights 1, in config.dtype."""
    dt = np.dtype(config.dtype)
    params = {}
    if config.embed_dim != config.hidden_size:
        params["input_proj.W"] = normal(rng, (config.embed_dim, config.hidden_size), dt)
        params["input_proj.b"] = np.zeros(config.hidden_size, dtype=dt)
    for i in range(config.num_layers):
        params.update(put(block.init_params(config, rng), f"blocks.{i}."))
    params.update(put(norm_init(config.norm, config.hidden_size, dt), "final_norm."))
    return params


class ModelCache(NamedTuple):
    """Children by name: the input projection (None when there is none), each block, the norm."""

    input_proj: Any  # LinearCache of (1), or None
    blocks: tuple  # num_layers BlockCache
    final_norm: Any  # NormCache of (3)
    h_shape: tuple  # (B, T, hidden_size)
    return_sequence: bool
    param_names: tuple  # the model's param names: grads get exactly these keys


def forward(params, x, config, *, training=False, rng=None, return_sequence=False):
    """x (B, T, embed_dim) -> y (B, hidden_size) at the last position, or (B, T, hidden_size).

    Dropout is active only with ``training=True`` and draws from ``rng`` block by block (the same
    seed gives the same masks). Extra entries in ``params`` (embedding, head) are ignored.
    Returns ``(y, cache)``.
    """
    x = check_input("x", x, config.embed_dim, config.dtype)
    check_bool("training", training)
    check_bool("return_sequence", return_sequence)
    shapes = _shapes(config)
    check_params(params, shapes, config.dtype)
    h, c_in = x, None
    if config.embed_dim != config.hidden_size:
        h, c_in = linear.forward(x, params["input_proj.W"], params["input_proj.b"])
    c_blocks = []
    for i in range(config.num_layers):
        h, c = block.forward(take(params, f"blocks.{i}."), h, config, training=training, rng=rng)
        c_blocks.append(c)
    hn, c_norm = norm_forward(take(params, "final_norm."), h, config.norm, config.norm_eps)
    y = hn if return_sequence else hn[:, -1]
    cache = ModelCache(c_in, tuple(c_blocks), c_norm, h.shape, return_sequence, tuple(shapes))
    return y, cache


def backward(dy, cache):
    """Return ``(dx, grads)``, grads keyed like params. Derivation: docs/derivations/layers/model.md

        dhn = dy at the last position, zero elsewhere (or dy itself with return_sequence)
        dh_L = Norm'(dhn);  dh_{l-1} = block_l'(dh_l);  dx = dh_0 W_in^T (or dh_0)

    ``dy`` None means zero; otherwise it must have y's shape and dtype (ValueError otherwise).
    """
    c = check_cache(cache, ModelCache, "model.forward")
    B, T, D = c.h_shape
    dt = c.final_norm.op.x_hat.dtype
    dy = check_upstream("dy", dy, (B, T, D) if c.return_sequence else (B, D), dt)
    # forward (3): y = hn[:, -1]   so: dhn is dy at position T-1 and zero before it
    # (with return_sequence, y = hn   so: dhn = dy)
    dhn = dy
    if not c.return_sequence:
        dhn = np.zeros((B, T, D), dtype=dt)
        dhn[:, -1] = dy
    dh, n_grads = norm_backward(dhn, c.final_norm)
    grads = put(n_grads, "final_norm.")
    for i in reversed(range(len(c.blocks))):
        dh, b_grads = block.backward(dh, c.blocks[i])
        grads.update(put(b_grads, f"blocks.{i}."))
    dx = dh
    if c.input_proj is not None:
        dx, grads["input_proj.W"], grads["input_proj.b"] = linear.backward(dh, c.input_proj)
    return dx, {name: grads[name] for name in c.param_names}


def init_state(config, batch):
    """Per-layer streaming states before the first token (zeros): a tuple of LayerState."""
    batch = check_positive_int("batch", batch)
    return tuple(gla_layer.init_state(config, batch) for _ in range(config.num_layers))


def step(params, x_t, state, config):
    """One position: x_t (B, embed_dim) -> (y_t (B, hidden_size), new_state). Inference only.

    y_t equals ``forward(..., return_sequence=True)[0][:, t]`` for the t-th call; each call costs
    the same time and memory however many positions came before.
    """
    x_t = check_input("x_t", x_t, config.embed_dim, config.dtype, step=True)
    check_params(params, _shapes(config), config.dtype)  # once per call, not per layer
    if not isinstance(state, tuple) or len(state) != config.num_layers:
        raise ValueError(f"state: expected a tuple of {config.num_layers} layer states "
                         f"(from init_state), got {type(state).__name__}")
    h = x_t
    if config.embed_dim != config.hidden_size:
        h, _ = linear.forward(x_t, params["input_proj.W"], params["input_proj.b"])
    new_state = []
    for i in range(config.num_layers):
        h, s = block.step(take(params, f"blocks.{i}."), h, state[i], config)
        new_state.append(s)
    y, _ = norm_forward(take(params, "final_norm."), h, config.norm, config.norm_eps)
    return y, tuple(new_state)
