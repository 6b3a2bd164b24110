"""The token-level model for the toy tasks: embedding, the GLA stack, an output head, the loss.

    x      = E[ids]                      (B, T, D)   gla_np.embedding           (1)
    h      = GLA-model(x)                (B, T, D)   gla_np.model, every position (2)
    logits = h W_head                    (B, T, V)   gla_np.linear, no bias     (3)
                                                     tied: W_head = E^T
    loss   = mean CE(logits, targets)    scalar      over target positions only (4)

``loss_and_grads`` runs the head (3) and the loss (4) only at the target positions: the others
add nothing to the loss, so their logits are never needed (on MQAR, 8 positions of 64 ask
something). ``forward(..., positions=mask)`` is that selection: logits (n, V) for the n
positions where ``mask`` is True, in row-major order, and backward puts zero at the others.

The model's ``embed_dim`` must equal its ``hidden_size`` (the embedding already has the model's
width, so the stack needs no input projection). The stack ends with its own norm, so the head
reads normalised features. Params: ``"embedding.weight"`` (V, D), the stack's own names (from
``gla_np.model.init_params``, which never start with "embedding" or "head") and
``"head.weight"`` (D, V). Embedding and head are separate matrices and start as N(0, 0.02^2)
like every other weight, unless ``config.tie_word_embeddings``: then there is no
``"head.weight"``, the head is the embedding matrix transposed (fla's and GPT-2's tying), and
E's gradient is the sum of its two uses, the lookup's and the head's.

One init differs from the stack's own: with ``use_short_conv`` the convolution kernels (W, C)
are redrawn from U(-1/sqrt(W), 1/sqrt(W)), PyTorch's default for a depthwise Conv1d. From the
stack's N(0, 0.02^2) a 4-tap convolution scales q, k and v down about 25-fold, the attention
scores start near zero, and on MQAR a 2-layer model sat on its loss plateau (about ln 128, "guess
any value") for about 600 steps instead of about 250 (measured, docs/experiments.md).

Nothing new is derived here: each step's backward is its module's, chained in reverse.

Generation (``gla_np.training.sample``): ``prefill`` reads a prompt with the chunked form and
returns the state after it; ``step`` then takes one token at a time, (1)-(3) at one position
with ``model.step``, and ``init_state`` is the state before any token.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from gla_np._checks import check_array, check_positive_int, values_scanned
from gla_np.layers import _params, gate, gla_layer, model, short_conv
from gla_np.layers._params import normal
from gla_np.recurrence import chunked
from gla_np.ops import cross_entropy, embedding, linear

EMBEDDING, HEAD = "embedding.weight", "head.weight"


def _check_config(config):
    if config.embed_dim != config.hidden_size:
        raise ValueError(f"config: expected embed_dim == hidden_size for the token model (no "
                         f"input projection), got {config.embed_dim} and {config.hidden_size}")


def init_params(config, vocab_size, rng):
    """Embedding, then the stack, then the head, then (with short convolutions) the
    convolution kernels, drawn from ``rng`` in that order (see the module docstring)."""
    _check_config(config)
    V = check_positive_int("vocab_size", vocab_size)
    D, dt = config.hidden_size, np.dtype(config.dtype)
    params = {EMBEDDING: normal(rng, (V, D), dt)}
    params.update(model.init_params(config, rng))
    if not config.tie_word_embeddings:
        params[HEAD] = normal(rng, (D, V), dt)
    bound = 1.0 / np.sqrt(config.conv_size)
    for name in params:
        if name.rsplit(".", 1)[-1].startswith("conv_"):  # blocks.<i>.attn.conv_q, _k, _v
            params[name] = rng.uniform(-bound, bound, params[name].shape).astype(dt)
    return params


def _own_names(config):
    """The token model's own parameter names: the embedding, and the head unless tied."""
    return (EMBEDDING,) if config.tie_word_embeddings else (EMBEDDING, HEAD)


def _stack(params):
    """The stack's own params: everything except the embedding and the head."""
    return {name: p for name, p in params.items() if name not in (EMBEDDING, HEAD)}


class LMCache(NamedTuple):
    """The three children's caches by name; nothing extra is stored or recomputed here."""

    embedding: Any  # EmbeddingCache of (1)
    stack: Any  # the model's cache of (2)
    head: Any  # LinearCache of (3)
    positions: Any  # bool (B, T): where the head ran; None: everywhere
    tied: bool  # the head was the embedding matrix transposed (no "head.weight")


def forward(params, ids, config, *, training=False, rng=None, positions=None):
    """ids: int (B, T), values in [0, vocab). Returns ``(logits, cache)``, logits (B, T, V).

    ``training`` turns dropout on; it then draws from ``rng``. ``positions``, a bool (B, T)
    array, runs the head only where it is True: logits are then (n, V), n = positions.sum().
    """
    _check_config(config)
    for name in _own_names(config):
        if name not in params:
            raise ValueError(f"params: expected an entry {name!r} (see lm.init_params)")
    if config.tie_word_embeddings and HEAD in params:
        raise ValueError(f"params: unexpected entry {HEAD!r}: with tie_word_embeddings the head "
                         f"is {EMBEDDING!r} transposed")
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"ids: expected shape (B, T), got {ids.shape}")
    if positions is not None:
        positions = np.asarray(positions)
        if positions.dtype != bool or positions.shape != ids.shape:
            raise ValueError(f"positions: expected a bool array of the ids' shape {ids.shape}, "
                             f"got {positions.dtype} {positions.shape}")
    x, c_emb = embedding.forward(ids, params[EMBEDDING])  # (B, T, D)
    h, c_stack = model.forward(_stack(params), x, config, training=training, rng=rng,
                               return_sequence=True)  # (B, T, D)
    if positions is not None:
        h = h[positions]  # (n, D): only the rows the head is asked for
    W_head = params[EMBEDDING].T if config.tie_word_embeddings else params[HEAD]  # (D, V)
    logits, c_head = linear.forward(h, W_head)  # (B, T, V), or (n, V) with positions
    return logits, LMCache(c_emb, c_stack, c_head, positions, config.tie_word_embeddings)


def backward(dlogits, cache):
    """Gradients of every parameter, keyed like ``params`` (the ids are integers: no dids).

        dh, dW_head = linear'(dlogits)       (3)
        dx, grads   = model'(dh)             (2)
        dE          = embedding'(dx)         (1)
        tied (W_head = E^T):  dE = embedding'(dx) + dW_head^T

    Each line is its module's backward: docs/derivations/ops/linear.md,
    docs/derivations/layers/model.md, docs/derivations/ops/embedding.md (and
    docs/derivations/ops/cross_entropy.md for dlogits).
    """
    dh, dW_head, _ = linear.backward(dlogits, cache.head)
    if cache.positions is not None:
        # forward: the head read h[positions]   so: dh is the head's dh there, zero elsewhere
        dh_rows, dh = dh, np.zeros((*cache.positions.shape, dh.shape[-1]), dtype=dh.dtype)
        dh[cache.positions] = dh_rows  # (B, T, D)
    dx, grads = model.backward(dh, cache.stack)
    dE_embed = embedding.backward(dx, cache.embedding)
    if cache.tied:
        # forward: x = E[ids] and logits = h E^T   so: dE_head = dW_head^T, added to the lookup's
        dE_head = dW_head.T  # (vocab, D)
        dE = dE_embed + dE_head  # E feeds the lookup and the head
        return {EMBEDDING: dE, **grads}
    return {EMBEDDING: dE_embed, **grads, HEAD: dW_head}


def loss_and_grads(params, ids, targets, config, *, training=False, rng=None):
    """Forward, loss (4) and backward in one call. Returns ``(loss, grads, logits)``.

    targets: int (B, T) with ``tasks.IGNORE`` (-100) where nothing is asked. ``loss`` is a
    Python float, the mean cross-entropy over the target positions. The head and the loss run
    only at the target positions (module docstring): ``logits`` are theirs, (n, V) in row-major
    order, so ``tasks.accuracy(logits, targets[targets != -100])`` is the batch's accuracy.

    Every parameter is scanned for nan and inf once, here; the arrays passed on inside the step
    are not scanned again (``_checks.values_scanned``).
    """
    targets = np.asarray(targets)
    if targets.shape != np.shape(ids):
        raise ValueError(f"targets: expected the ids' shape {np.shape(ids)}, "
                         f"got {targets.shape}")
    asked = targets != -100  # (B, T) bool
    if not isinstance(params, dict):
        raise ValueError(f"params: expected a dict of arrays, got {type(params).__name__}")
    for name, p in params.items():  # every value scanned once here, not again inside
        check_array(f"params[{name!r}]", p)
    with values_scanned():
        logits, cache = forward(params, ids, config, training=training, rng=rng, positions=asked)
        loss, c_loss = cross_entropy.forward(logits, targets[asked], ignore_index=-100)
        dlogits = cross_entropy.backward(1.0, c_loss)  # (n, V)
        grads = backward(dlogits, cache)
    return float(loss), grads, logits


def forget_gates(params, ids, config):
    """The log forget gates g <= 0 of every layer on ``ids``: a tuple of (B, T, H, K) arrays.

    exp(g) is how much of each state row a head keeps at each token. Each layer's gate reads
    the output of that layer's pre-norm, which the forward's cache holds (xn = x_hat * w, + b
    for LayerNorm, the very product the forward computed).
    """
    _, cache = forward(params, ids, config)
    H, K = config.num_heads, config.head_dim
    gates = []
    for i, c in enumerate(cache.stack.blocks):
        p = _params.take(params, f"blocks.{i}.attn.")
        xn = c.attn.norm.op.x_hat * p["norm.w"] + (p["norm.b"] if config.norm == "layernorm"
                                                   else 0)
        g, _ = gate.forward(_params.take(p, "gate."), xn, kind=config.gate, num_heads=H,
                            head_dim=K, normalizer=config.gate_normalizer)
        gates.append(g)
    return tuple(gates)


# -- generation: one token at a time with a constant-size state ------------------------------

def init_state(config, batch):
    """The stack's state before the first token (``model.init_state``): per layer the (B, H,
    K, V) matrix S and, with short convolutions, the last W - 1 inputs of each convolution."""
    return model.init_state(config, batch)


def step(params, ids_t, state, config):
    """One token per row: ids_t int (B,) -> ``(logits_t (B, V), new_state)``. Inference only.

    (1)-(3) at one position, the stack run by ``model.step``: its time and memory are the same
    whatever the number of tokens before, since everything they left is in ``state``.
    """
    ids_t = np.asarray(ids_t)
    if ids_t.ndim != 1:
        raise ValueError(f"ids_t: expected shape (B,), got {ids_t.shape}")
    x_t, _ = embedding.forward(ids_t, params[EMBEDDING])  # (B, D)
    h_t, state = model.step(_stack(params), x_t, state, config)  # (B, D)
    W_head = params[EMBEDDING].T if config.tie_word_embeddings else params[HEAD]  # (D, V)
    logits_t, _ = linear.forward(h_t, W_head)  # (B, V)
    return logits_t, state


def prefill(params, ids, config):
    """Read a prompt ids int (B, T) in one pass of the chunked form; returns ``(logits (B, V)
    at its last position, state after it)``, the state ``step`` continues from.

    The state is the chunked forward's final state ``H_N = S_T``, which the layer does not ask
    for: ``chunked.final_state`` computes it from the last chunk-boundary state the cache keeps,
    ``H_{N-1}``, and the last chunk (docs/derivations/recurrence/chunked.md) and, with short
    convolutions, the last W - 1 inputs of each convolution. It equals the state of
    ``step`` run over the same tokens to rounding (tests/test_sample.py checks it).
    """
    config = dataclasses.replace(config, form="chunk")
    ids = np.asarray(ids)
    last = np.zeros(ids.shape, dtype=bool)
    last[:, -1] = True  # the head runs at the last position only
    logits, cache = forward(params, ids, config, positions=last)  # (B, V)
    state = []
    for c in cache.stack.blocks:
        S_T = chunked.final_state(c.attn.core.inner)  # (B, H, K, V)
        conv = ()
        if config.use_short_conv:
            conv = tuple(short_conv.new_prefix(cc) for cc in c.attn.qkv.conv)  # (B, W-1, C)
        state.append(gla_layer.LayerState(S_T, conv))
    return logits, tuple(state)
