"""Softmax cross-entropy over a vocabulary, averaged over the positions that count.

For logits z of shape (..., vocab) and integer targets t of shape (...), each position p with
t[p] != ignore_index contributes the negative log-probability of its target:

    nll[p] = logsumexp(z[p]) - z[p, t[p]]
    loss   = (1 / n) * sum over counted p of nll[p],     n = number of counted positions.

Positions whose target equals ``ignore_index`` (padding, say) add nothing to the loss and get a
zero gradient. When no position counts (n = 0) the loss is defined as 0 and the gradient is zero
everywhere, rather than the 0/0 = nan a plain mean would give.

Stability: logsumexp is computed as ``m + log(sum(exp(z - m)))`` with m the row maximum, so the
largest exponent is exactly 0 and nothing overflows, even for logits of +-1e4 in float32.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from gla_np._checks import check_array, check_shape


class CrossEntropyCache(NamedTuple):
    """What backward needs: the softmax probabilities (computed once in forward anyway, so
    backward does not exponentiate again), which target each position asked for, and which
    positions counted. ``count`` is the n of the mean (0 when every position was ignored)."""

    probs: np.ndarray  # (..., vocab), softmax(logits), logits' dtype
    targets: np.ndarray  # (...), integer; ignored positions replaced by 0 (a harmless index)
    counted: np.ndarray  # (...), bool: True where targets != ignore_index
    count: int  # number of counted positions, n


def _check_targets(targets, batch_shape, vocab, ignore_index):
    """Return ``targets`` as an integer array of ``batch_shape`` with valid values."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise ValueError(f"ignore_index: expected an integer, got {ignore_index!r}")
    targets = np.asarray(targets)
    if not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets: expected an integer array, got dtype {targets.dtype}")
    check_shape("targets", targets, batch_shape)
    valid = ((targets >= 0) & (targets < vocab)) | (targets == ignore_index)
    if not valid.all():
        bad = targets[~valid].reshape(-1)[0]
        raise ValueError(f"targets: expected values in [0, {vocab}) or ignore_index="
                         f"{ignore_index}, got {bad}")
    return targets


def forward(logits, targets, ignore_index=-100):
    """Mean softmax cross-entropy of ``logits`` (..., vocab) against ``targets`` (...).

    Returns ``(loss, cache)``: ``loss`` is a 0-d array in the logits' dtype, the mean over the
    positions whose target is not ``ignore_index`` (0 if there are none).
    """
    logits = check_array("logits", logits, min_ndim=1)
    vocab = logits.shape[-1]
    if vocab < 1:
        raise ValueError(f"logits: expected a vocabulary axis of size >= 1, got shape "
                         f"{logits.shape}")
    targets = _check_targets(targets, logits.shape[:-1], vocab, ignore_index)

    counted = targets != ignore_index  # (...) bool
    count = int(counted.sum())
    safe = np.where(counted, targets, 0)  # (...) an index that is valid everywhere

    shifted = logits - logits.max(axis=-1, keepdims=True)  # (..., vocab), every entry <= 0
    shifted_t = np.take_along_axis(shifted, safe[..., None], axis=-1)[..., 0]  # (...)
    # Entries far below the row maximum underflow to 0 (or to a subnormal), the correctly
    # rounded answer: silence that one flag (as sigmoid does) around exp and the division, so
    # that even np.errstate(all="raise") stays quiet.
    with np.errstate(under="ignore"):
        # (..., vocab), in [0, 1], the row maximum gives exactly 1: exp in place, into shifted
        # (an array made here, read above for shifted_t and not again)
        probs = np.exp(shifted, out=shifted)
        sums = probs.sum(axis=-1, keepdims=True)  # (..., 1), in [1, vocab]
        probs /= sums  # (..., vocab): exp(shifted) / sums, normalised in place
    # nll = logsumexp(z) - z_t = (m + log sums) - (m + shifted_t): the max m cancels
    nll = np.log(sums[..., 0]) - shifted_t  # (...), >= 0
    nll = np.where(counted, nll, 0)  # (...), zero at ignored positions
    loss = np.asarray(nll.sum() / max(count, 1), dtype=logits.dtype)  # 0-d
    return loss, CrossEntropyCache(probs, safe, counted, count)


def _check_dloss(dloss):
    """``dloss`` as a Python float (None means zero, as for every upstream gradient)."""
    if dloss is None:
        return 0.0
    value = np.asarray(dloss)
    if value.ndim != 0 or not np.issubdtype(value.dtype, np.number) or not np.isfinite(value):
        raise ValueError(f"dloss: expected a finite scalar, got {dloss!r}")
    return float(value)


def backward(dloss, cache):
    """Gradient of the mean cross-entropy with respect to the logits.

    Result box (see docs/derivations/ops/cross_entropy.md)::

        dlogits[p, :] = dloss * (softmax(logits[p]) - onehot(t[p])) / n   if p is counted
        dlogits[p, :] = 0                                                    if p is ignored
        (n = 0: every position is ignored and dlogits is zero)

    ``dloss`` is a scalar, 1.0 when the loss is the end of the graph (the usual case); ``None``
    means zero, as for every upstream gradient in gla_np.
    """
    scale = _check_dloss(dloss) / max(cache.count, 1)
    # forward: nll[p] = logsumexp(z[p]) - z[p, t[p]],  loss = sum_counted nll / n
    # so: dnll[p] = dloss / n on counted p (0 elsewhere), dz[p] = dnll[p] * (probs[p] - onehot)
    dtype = cache.probs.dtype  # scale as a scalar of that dtype: a Python float would make a
    dnll = cache.counted.astype(dtype) * dtype.type(scale)  # 0-d dnll float64 under NumPy 1.x
    t = cache.targets[..., None]  # (..., 1)
    with np.errstate(under="ignore"):  # a tiny probability times dloss / n may underflow to 0
        dlogits = cache.probs * dnll[..., None]  # (..., vocab): (probs - 0) dnll off target ...
        # ... and (probs - 1) dnll at each position's target entry, written in place rather
        # than building and subtracting a (..., vocab) one-hot matrix
        p_t = np.take_along_axis(cache.probs, t, axis=-1)  # (..., 1)
        np.put_along_axis(dlogits, t, (p_t - dtype.type(1)) * dnll[..., None], axis=-1)
    return dlogits
