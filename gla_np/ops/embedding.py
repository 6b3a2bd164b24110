"""Token embedding: look up one row of a table per token id.

    y[..., :] = E[ids[...], :]       E: (vocab, D), ids: any shape, y: ids.shape + (D,)

A lookup is a matrix product with one-hot rows, ``y = onehot(ids) @ E``, done without building
the one-hot matrix. Seen that way the backward is ``dE = onehot(ids)^T @ dy``: every row of dy
is added into the row of dE its id picked, and an id that occurs several times collects the sum
of all its rows. The ids themselves are integers and get no gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gla_np._checks import check_array, check_shape


class EmbeddingCache(NamedTuple):
    """What backward needs: which row each position picked. The table E itself is not needed,
    since y is linear in E with a coefficient (0 or 1) that does not depend on E."""

    ids: np.ndarray  # ids.shape, integer, values in [0, vocab)
    E_shape: tuple  # (vocab, D)
    E_dtype: np.dtype  # dtype of E and of dE


def _check_ids(ids, vocab):
    """Return ``ids`` as an integer ndarray with every value in [0, vocab)."""
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids: expected an integer array, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"ids: expected values in [0, {vocab}), got values in "
                         f"[{ids.min()}, {ids.max()}]")
    return ids


def forward(ids, E):
    """Look up ``E[ids]``.

    ids: integer array of any shape, values in [0, vocab).
    E:   (vocab, D) float32 or float64 table.

    Returns ``(y, cache)`` with ``y`` of shape ``ids.shape + (D,)`` and E's dtype.
    """
    E = check_array("E", E, ndim=2)
    ids = _check_ids(ids, E.shape[0])
    y = E[ids]  # ids.shape + (D,), fancy indexing makes a copy
    return y, EmbeddingCache(ids, E.shape, E.dtype)


def backward(dy, cache):
    """Gradient of the lookup with respect to the table ``E`` (the ids get none).

    Result box (see docs/derivations/ops/embedding.md)::

        dE[v, :] = sum over positions p with ids[p] == v of dy[p, :]
        (rows of E that no id picked get zero)

    ``dy=None`` means zero and gives a zero ``dE``. ``dy`` must have E's dtype.
    """
    if dy is None:
        return np.zeros(cache.E_shape, dtype=cache.E_dtype)
    dy = check_array("dy", dy)
    check_shape("dy", dy, cache.ids.shape + (cache.E_shape[1],))
    if dy.dtype != cache.E_dtype:
        raise ValueError(f"dy: expected dtype {cache.E_dtype} (the forward's dtype), "
                         f"got {dy.dtype}")
    vocab, D = cache.E_shape
    dE = np.zeros(cache.E_shape, dtype=cache.E_dtype)  # (vocab, D)
    # forward: y[p] = E[ids[p]]   so: dE[v] = sum of dy[p] over the positions p with ids[p] == v.
    # Sort the positions by id (stable: within an id, in position order) and sum each run of
    # equal ids in one pass (np.add.reduceat), instead of one scattered add per position
    # (np.add.at, which is about five times slower).
    ids = cache.ids.reshape(-1)  # (P,)
    order = np.argsort(ids, kind="stable")  # (P,)
    sorted_ids = ids[order]  # (P,), nondecreasing
    starts = np.flatnonzero(np.diff(sorted_ids, prepend=-1))  # (U,) first position of each id
    if starts.size:
        dE[sorted_ids[starts]] = np.add.reduceat(dy.reshape(-1, D)[order], starts, axis=0)
    return dE
