"""The token-level model for the toy tasks: embedding, the GLA stack, an output head, the loss.

    x      = E[ids]                      (B, T, D)   gla_np.embedding           (1)
    h      = GLA-model(x)                (B, T, D)   gla_np.model, every position (2)
    logits = h W_head                    (B, T, V)   gla_np.linear, no bias     (3)
    loss   = mean CE(logits, targets)    scalar      over target positions only (4)

``loss_and_grads`` runs the head (3) and the loss (4) only at the target positions: the others
add nothing to the loss, so their logits are never needed (on MQAR, 8 positions of 64 ask
something). ``forward(..., positions=mask)`` is that selection: logits (n, V) for the n
positions where ``mask`` is True, in row-major order, and backward puts zero at the others.

The model's ``embed_dim`` must equal its ``hidden_size`` (the embedding already has the model's
width, so the stack needs no input projection). The stack ends with its own norm, so the head
reads normalised features. Params: ``"embedding.weight"`` (V, D), the stack's own names (from
``gla_np.model.init_params``, which never start with "embedding" or "head") and
``"head.weight"`` (D, V). Embedding and head are separate matrices (not tied) and start as
N(0, 0.02^2) like every other weight.

One init differs from the stack's own: with ``use_short_conv`` the convolution kernels (W, C)
are redrawn from U(-1/sqrt(W), 1/sqrt(W)), PyTorch's default for a depthwise Conv1d. From the
stack's N(0, 0.02^2) a 4-tap convolution scales q, k and v down about 25-fold, the attention
scores start near zero, and on MQAR a 2-layer model sat on its loss plateau (about ln 128, "guess
any value") for about 600 steps instead of about 250 (measured, docs/experiments.md).

Nothing new is derived here: each step's backward is its module's, chained in reverse.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from gla_np import cross_entropy, embedding, linear, model
from gla_np._checks import check_positive_int
from gla_np._params import normal

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
    params[HEAD] = normal(rng, (D, V), dt)
    bound = 1.0 / np.sqrt(config.conv_size)
    for name in params:
        if name.rsplit(".", 1)[-1].startswith("conv_"):  # blocks.<i>.attn.conv_q, _k, _v
            params[name] = rng.uniform(-bound, bound, params[name].shape).astype(dt)
    return params


def _stack(params):
    """The stack's own params: everything except the embedding and the head."""
    return {name: p for name, p in params.items() if name not in (EMBEDDING, HEAD)}


class LMCache(NamedTuple):
    """The three children's caches by name; nothing extra is stored or recomputed here."""

    embedding: Any  # EmbeddingCache of (1)
    stack: Any  # the model's cache of (2)
    head: Any  # LinearCache of (3)
    positions: Any  # bool (B, T): where the head ran; None: everywhere


def forward(params, ids, config, *, training=False, rng=None, positions=None):
    """ids: int (B, T), values in [0, vocab). Returns ``(logits, cache)``, logits (B, T, V).

    ``training`` turns dropout on; it then draws from ``rng``. ``positions``, a bool (B, T)
    array, runs the head only where it is True: logits are then (n, V), n = positions.sum().
    """
    _check_config(config)
    for name in (EMBEDDING, HEAD):
        if name not in params:
            raise ValueError(f"params: expected an entry {name!r} (see lm.init_params)")
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
    logits, c_head = linear.forward(h, params[HEAD])  # (B, T, V), or (n, V) with positions
    return logits, LMCache(c_emb, c_stack, c_head, positions)


def backward(dlogits, cache):
    """Gradients of every parameter, keyed like ``params`` (the ids are integers: no dids).

        dh, dW_head = linear'(dlogits)       (3)
        dx, grads   = model'(dh)             (2)
        dE          = embedding'(dx)         (1)

    Each line is its module's backward: docs/derivations/linear.md, docs/derivations/model.md,
    docs/derivations/embedding.md (and docs/derivations/cross_entropy.md for dlogits).
    """
    dh, dW_head, _ = linear.backward(dlogits, cache.head)
    if cache.positions is not None:
        # forward: the head read h[positions]   so: dh is the head's dh there, zero elsewhere
        dh_rows, dh = dh, np.zeros((*cache.positions.shape, dh.shape[-1]), dtype=dh.dtype)
        dh[cache.positions] = dh_rows  # (B, T, D)
    dx, grads = model.backward(dh, cache.stack)
    dE = embedding.backward(dx, cache.embedding)
    return {EMBEDDING: dE, **grads, HEAD: dW_head}


def loss_and_grads(params, ids, targets, config, *, training=False, rng=None):
    """Forward, loss (4) and backward in one call. Returns ``(loss, grads, logits)``.

    targets: int (B, T) with ``tasks.IGNORE`` (-100) where nothing is asked. ``loss`` is a
    Python float, the mean cross-entropy over the target positions. The head and the loss run
    only at the target positions (module docstring): ``logits`` are theirs, (n, V) in row-major
    order, so ``tasks.accuracy(logits, targets[targets != -100])`` is the batch's accuracy.
    """
    targets = np.asarray(targets)
    if targets.shape != np.shape(ids):
        raise ValueError(f"targets: expected the ids' shape {np.shape(ids)}, "
                         f"got {targets.shape}")
    asked = targets != -100  # (B, T) bool
    logits, cache = forward(params, ids, config, training=training, rng=rng, positions=asked)
    loss, c_loss = cross_entropy.forward(logits, targets[asked], ignore_index=-100)
    dlogits = cross_entropy.backward(1.0, c_loss)  # (n, V)
    return float(loss), backward(dlogits, cache), logits
