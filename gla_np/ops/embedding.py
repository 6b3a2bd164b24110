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


def _sort_key(ids, vocab):
    """``ids`` (values in [0, vocab)) as the narrowest unsigned integer type that holds them.

    The order of a stable sort does not depend on the integer type, only its speed does: NumPy's
    stable argsort of 8- and 16-bit integers is a radix sort (one counting pass per byte), of
    wider ones a merge sort. A vocabulary of at most 256 ids sorts in one counting pass.
    """
    for kind in (np.uint8, np.uint16, np.uint32):
        if vocab - 1 <= np.iinfo(kind).max:
            return ids.astype(kind)
    return ids


def forward(ids, E):
    """Look up ``E[ids]``.

    ids: integer array of any shape, values in [0, vocab).
    E:   (vocab, D) float32 or float64 table.

    Returns ``(y, cache)`` with ``y`` of shape ``ids.shape + (D,)`` and E's dtype.
    """
    E = check_array("E", E, ndim=2)
    ids = _check_ids(ids, E.shape[0])
    y = np.take(E, ids, axis=0)  # ids.shape + (D,), a copy: E[ids], in NumPy's faster gather
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
    if cache.ids.size == 0:
        return dE
    # forward: y[p] = E[ids[p]]   so: dE[v] = sum of dy[p] over the positions p with ids[p] == v.
    # Sort the positions by id (stable: within an id, in position order) and sum each run of
    # equal ids in one pass (np.add.reduceat), instead of one scattered add per position
    # (np.add.at, which is about five times slower).
    key = _sort_key(cache.ids.reshape(-1), vocab)  # (P,), the ids in the narrowest unsigned type
    order = np.argsort(key, kind="stable")  # (P,)
    sorted_ids = key[order]  # (P,), nondecreasing
    new_run = np.empty(sorted_ids.shape, dtype=bool)  # (P,) True where a run of equal ids starts
    new_run[0] = True
    np.not_equal(sorted_ids[1:], sorted_ids[:-1], out=new_run[1:])
    starts = np.flatnonzero(new_run)  # (U,) first position of each id in sorted order
    rows = np.take(dy.reshape(-1, D), order, axis=0)  # (P, D), dy's rows in sorted order
    dE[sorted_ids[starts]] = np.add.reduceat(rows, starts, axis=0)
    return dE
