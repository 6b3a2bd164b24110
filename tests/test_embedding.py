"""Tests for gla_np.embedding: lookup, gradient with repeated ids, dtypes, bad input."""

import re

import numpy as np
import pytest

from gla_np import embedding, gradcheck

IDS = {
    "scalar": np.array(3),
    "T6-repeats": np.array([0, 2, 2, 5, 2, 0]),
    "B2-T3-repeats": np.array([[1, 1, 4], [4, 0, 1]]),
    "B2-T2-H2": np.array([[[5, 5], [5, 5]], [[0, 1], [2, 3]]]),
}


@pytest.mark.parametrize("ids", list(IDS.values()), ids=list(IDS))
def test_gradcheck_wrt_table(ids):
    E = np.random.default_rng(0).standard_normal((6, 4))  # vocab 6, D 4
    report = gradcheck(lambda E: embedding.forward(ids, E), embedding.backward, {"E": E})
    assert report.tensors[0].rel_err <= 1e-7


def test_forward_is_row_lookup():
    rng = np.random.default_rng(1)
    E = rng.standard_normal((6, 4))
    ids = IDS["B2-T3-repeats"]
    y, _ = embedding.forward(ids, E)
    assert y.shape == (2, 3, 4)
    for b in range(2):
        for t in range(3):
            assert np.array_equal(y[b, t], E[ids[b, t]])


def test_repeated_ids_sum_and_unused_rows_zero():
    rng = np.random.default_rng(2)
    E = rng.standard_normal((6, 3))
    ids = np.array([2, 2, 2, 4])
    _, cache = embedding.forward(ids, E)
    dy = rng.standard_normal((4, 3))
    dE = embedding.backward(dy, cache)
    np.testing.assert_allclose(dE[2], dy[0] + dy[1] + dy[2], rtol=1e-14)
    np.testing.assert_array_equal(dE[4], dy[3])
    assert not dE[[0, 1, 3, 5]].any()
    onehot = np.eye(6)[ids]  # (4, 6): the lookup as a matrix product
    np.testing.assert_allclose(dE, onehot.T @ dy, rtol=1e-14)


def test_float32_keeps_dtype_and_none_upstream():
    E = np.random.default_rng(3).standard_normal((5, 2)).astype(np.float32)
    y, cache = embedding.forward(np.array([[0, 4]]), E)
    assert y.dtype == np.float32
    assert embedding.backward(np.ones_like(y), cache).dtype == np.float32
    dE = embedding.backward(None, cache)
    assert dE.shape == (5, 2) and dE.dtype == np.float32 and not dE.any()


@pytest.mark.parametrize("ids", [np.array([0.0, 1.0]), np.array([True, False]),
                                 np.array([0, -1]), np.array([[0, 5]])],
                         ids=["float-dtype", "bool-dtype", "negative", "equal-vocab"])
def test_bad_ids(ids):
    with pytest.raises(ValueError, match="ids"):
        embedding.forward(ids, np.ones((5, 2)))


@pytest.mark.parametrize("E", [np.ones(5), np.ones((5, 2), dtype=np.int64),
                               np.array([[1.0, np.inf]])],
                         ids=["rank1", "int-dtype", "inf"])
def test_bad_table(E):
    with pytest.raises(ValueError, match="E"):
        embedding.forward(np.array([0]), E)


def test_bad_dy_shape():
    _, cache = embedding.forward(np.array([[0, 1, 2]]), np.ones((4, 2)))
    with pytest.raises(ValueError, match="dy"):
        embedding.backward(np.ones((3, 2)), cache)


@pytest.mark.parametrize("E_dtype, dy_dtype", [(np.float32, np.float64), (np.float64, np.float32)],
                         ids=["f32-table-f64-dy", "f64-table-f32-dy"])
def test_dy_of_another_dtype_is_refused_not_cast(E_dtype, dy_dtype):
    _, cache = embedding.forward(np.array([[0, 1, 2]]), np.ones((4, 2), dtype=E_dtype))
    message = (f"dy: expected dtype {np.dtype(E_dtype)} (the forward's dtype), "
               f"got {np.dtype(dy_dtype)}")
    with pytest.raises(ValueError, match=re.escape(message)):
        embedding.backward(np.ones((1, 3, 2), dtype=dy_dtype), cache)


def _sum_by_id_unnarrowed(ids, dy, vocab):
    """The same sums from a sort of the int64 ids themselves (a merge sort, not a radix sort)."""
    ids, rows = ids.reshape(-1), dy.reshape(ids.size, -1)
    order = np.argsort(ids, kind="stable")
    starts = np.flatnonzero(np.diff(ids[order], prepend=-1))
    dE = np.zeros((vocab, rows.shape[1]), dtype=dy.dtype)
    dE[ids[order][starts]] = np.add.reduceat(rows[order], starts, axis=0)
    return dE


@pytest.mark.parametrize("vocab, key_dtype", [(2, np.uint8), (256, np.uint8), (257, np.uint16),
                                              (65536, np.uint16), (65537, np.uint32)],
                         ids=["vocab2-u8", "vocab256-u8", "vocab257-u16", "vocab65536-u16",
                              "vocab65537-u32"])
def test_backward_sorts_on_the_narrowest_key_and_sums_in_position_order(vocab, key_dtype):
    # the ids are sorted as the narrowest unsigned type that holds vocab - 1; the sums must be
    # bitwise those of a sort of the int64 ids (the same order within each id) and np.add.at's
    # to rounding (np.add.reduceat may add a run's rows in another order than one by one)
    rng = np.random.default_rng(4)
    ids = rng.integers(0, vocab, size=(3, 50))
    ids[0, :3] = [0, vocab - 1, vocab - 1]  # both ends of the vocabulary, one repeated
    ids[2, -5:] = ids[1, 7]  # an id that occurs at least six times
    assert embedding._sort_key(ids.reshape(-1), vocab).dtype == key_dtype
    for dtype, rtol in ((np.float32, 1e-5), (np.float64, 1e-13)):
        E = np.zeros((vocab, 3), dtype=dtype)
        _, cache = embedding.forward(ids, E)
        dy = rng.standard_normal((3, 50, 3)).astype(dtype)
        dE = embedding.backward(dy, cache)
        assert dE.dtype == dtype
        np.testing.assert_array_equal(dE, _sum_by_id_unnarrowed(ids, dy, vocab))
        want = np.zeros_like(E)
        np.add.at(want, ids.reshape(-1), dy.reshape(-1, 3))
        np.testing.assert_allclose(dE, want, rtol=rtol, atol=rtol)


def test_backward_of_no_positions_is_zero():
    _, cache = embedding.forward(np.zeros((2, 0), dtype=np.int64), np.ones((4, 3)))
    dE = embedding.backward(np.ones((2, 0, 3)), cache)
    assert dE.shape == (4, 3) and not dE.any()


@pytest.mark.parametrize("ids", list(IDS.values()), ids=list(IDS))
def test_forward_returns_a_copy_of_the_rows(ids):
    E = np.random.default_rng(5).standard_normal((6, 4))
    y, _ = embedding.forward(ids, E)
    assert y.shape == ids.shape + (4,) and not np.shares_memory(y, E)
    np.testing.assert_array_equal(y, E[ids])
