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
