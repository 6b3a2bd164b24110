"""Inverted dropout: zero each entry with probability ``rate`` and scale the survivors up.

During training every entry of ``x`` is kept with probability ``1 - rate`` and, when kept,
divided by ``1 - rate``, so the expected output equals the input:

    y = x * keep / (1 - rate),   keep ~ Bernoulli(1 - rate), independently per entry.

Because the scaling happens at training time ("inverted" dropout), evaluation needs no
correction: with ``training=False`` (or ``rate == 0``) dropout is the identity and draws no
random numbers. The randomness comes from an ``np.random.Generator`` the caller passes in, so
the same seed gives the same mask and nothing is hidden in module state.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gla_np._checks import check_array, check_rate, check_shape


class DropoutCache(NamedTuple):
    """What backward needs: the keep mask drawn in forward (never x itself).

    Backward multiplies by the same mask and scale, so the mask must be the one forward used;
    drawing it again would need the generator's old state. ``keep`` is None when forward was the
    identity (not training, or rate == 0).
    """

    keep: np.ndarray | None  # x.shape, bool: True where the entry survived; None if identity
    rate: float  # the drop probability, in [0, 1)
    x_shape: tuple  # x.shape, to check dy and to build a zero gradient for dy=None
    x_dtype: np.dtype  # x.dtype, the dtype of dx


def is_identity(rate, training):
    """Whether ``forward`` is the identity: not training, or ``rate == 0`` (no mask drawn).

    A caller whose input is an array it made itself may then skip ``forward`` (and its copy):
    it keeps ``identity_cache(x, rate)`` and takes the upstream gradient itself as ``dx``, read
    only, instead of calling ``backward``.
    """
    return not training or rate == 0.0


def identity_cache(x, rate):
    """The cache of ``forward`` where it is the identity: no mask, x's shape and dtype."""
    return DropoutCache(None, rate, x.shape, x.dtype)


def forward(x, rate, rng=None, training=True):
    """Apply inverted dropout to ``x`` (any shape, float32 or float64).

    rate:     drop probability in [0, 1).
    rng:      an ``np.random.Generator``; required only when training with rate > 0.
    training: when False, return a copy of ``x`` and use no randomness.

    Returns ``(y, cache)`` with ``y`` of x's shape and dtype.
    """
    x = check_array("x", x)
    rate = check_rate("rate", rate)
    if is_identity(rate, training):
        return x.copy(), identity_cache(x, rate)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected an np.random.Generator when training with rate > 0, "
                         f"got {type(rng).__name__}")

    keep = rng.random(x.shape) >= rate  # (x.shape) bool, True with probability 1 - rate
    # keeps x.dtype: the bool mask adapts to x, and 1 - rate is made a scalar of x's dtype (a
    # Python float would turn a 0-d float32 x into float64 under NumPy 1.x's promotion rules)
    y = x * keep / x.dtype.type(1.0 - rate)
    return y, DropoutCache(keep, rate, x.shape, x.dtype)


def backward(dy, cache):
    """Gradient of dropout with respect to ``x``.

    Result box (see docs/derivations/ops/dropout.md)::

        dx = dy * keep / (1 - rate)     (training, rate > 0)
        dx = dy                         (identity)

    ``dy=None`` means zero and gives a zero ``dx``. ``dy`` must have x's shape and dtype.
    """
    if dy is None:
        return np.zeros(cache.x_shape, dtype=cache.x_dtype)
    dy = check_array("dy", dy)
    check_shape("dy", dy, cache.x_shape)
    if dy.dtype != cache.x_dtype:
        raise ValueError(f"dy: expected dtype {cache.x_dtype} (the forward's dtype), "
                         f"got {dy.dtype}")
    if cache.keep is None:
        # forward: y = x   so: dx = dy (a copy: the caller may write into dx, not into dy)
        return dy.copy()
    # forward: y = x * keep / (1 - rate)   so: dx = dy * keep / (1 - rate)
    return dy * cache.keep / dy.dtype.type(1.0 - cache.rate)  # keeps dy's dtype, which is x's
