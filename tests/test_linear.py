"""Tests for gla_np.linear: y = x @ W + b over the last axis, any leading batch shape."""

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gla_np import gradcheck, linear

D_IN, D_OUT = 4, 3
BATCH_SHAPES = [(), (5,), (2, 3)]  # leading batch of rank 0, 1 and 2


def batch_id(shape):
    return "batch(" + ",".join(map(str, shape)) + ")"


def make_inputs(rng, batch, bias, dtype=np.float64):
    x = rng.standard_normal(batch + (D_IN,)).astype(dtype)
    W = rng.standard_normal((D_IN, D_OUT)).astype(dtype)
    b = rng.standard_normal(D_OUT).astype(dtype) if bias else None
    return x, W, b


def run_gradcheck(x, W, b):
    """Gradcheck with or without bias; returns the report (raises on failure)."""
    if b is None:
        return gradcheck(lambda x, W: linear.forward(x, W), linear.backward, {"x": x, "W": W})
    return gradcheck(linear.forward, linear.backward, {"x": x, "W": W, "b": b})


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("batch", BATCH_SHAPES, ids=batch_id)
def test_gradcheck(batch, bias):
    x, W, b = make_inputs(np.random.default_rng(0), batch, bias)
    report = run_gradcheck(x, W, b)
    assert report.ok
    assert max(t.rel_err for t in report.tensors) <= 1e-7, str(report)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("batch", BATCH_SHAPES, ids=batch_id)
def test_forward_matches_einsum(batch, bias):
    x, W, b = make_inputs(np.random.default_rng(1), batch, bias)
    y, _ = linear.forward(x, W, b)
    expected = np.einsum("...i,ij->...j", x, W) + (0.0 if b is None else b)
    assert y.shape == batch + (D_OUT,)
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("batch", BATCH_SHAPES, ids=batch_id)
def test_backward_matches_einsum(batch):
    """The three gradients against einsum and loops written from the index formulas."""
    rng = np.random.default_rng(2)
    x, W, b = make_inputs(rng, batch, True)
    _, cache = linear.forward(x, W, b)
    dy = rng.standard_normal(batch + (D_OUT,))
    dx, dW, db = linear.backward(dy, cache)
    np.testing.assert_allclose(dx, np.einsum("...j,ij->...i", dy, W), rtol=1e-13, atol=1e-13)
    # dW and db: an explicit loop over every leading index (a sum of outer products)
    dW_loop = sum(np.outer(x[idx], dy[idx]) for idx in np.ndindex(batch))
    db_loop = sum(dy[idx] for idx in np.ndindex(batch))
    np.testing.assert_allclose(dW, dW_loop, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(db, db_loop, rtol=1e-13, atol=1e-13)


def test_no_bias_gives_db_none():
    x, W, _ = make_inputs(np.random.default_rng(3), (2,), False)
    y, cache = linear.forward(x, W)
    dx, dW, db = linear.backward(np.ones_like(y) * 0.5, cache)
    assert db is None
    assert dx.shape == x.shape and dW.shape == W.shape


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_upstream_none_means_zero(bias):
    x, W, b = make_inputs(np.random.default_rng(4), (2, 3), bias)
    _, cache = linear.forward(x, W, b)
    dx, dW, db = linear.backward(None, cache)
    assert not dx.any() and dx.shape == x.shape
    assert not dW.any() and dW.shape == W.shape
    assert (db is None) if not bias else (db.shape == (D_OUT,) and not db.any())


@pytest.mark.parametrize("batch", BATCH_SHAPES, ids=batch_id)
def test_float32_matches_float64(batch):
    rng = np.random.default_rng(5)
    x, W, b = make_inputs(rng, batch, True)
    dy = rng.standard_normal(batch + (D_OUT,))
    y64, c64 = linear.forward(x, W, b)
    y32, c32 = linear.forward(x.astype(np.float32), W.astype(np.float32), b.astype(np.float32))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-5)
    for g32, g64 in zip(linear.backward(dy.astype(np.float32), c32), linear.backward(dy, c64)):
        assert g32.dtype == np.float32
        np.testing.assert_allclose(g32, g64, rtol=1e-5, atol=1e-5)


@given(batch=st.lists(st.integers(1, 3), min_size=0, max_size=3).map(tuple),
       d_in=st.integers(1, 4), d_out=st.integers(1, 4), bias=st.booleans())
def test_any_batch_shape(batch, d_in, d_out, bias):
    """Hypothesis draws leading shapes and widths; forward agrees with einsum, gradients check."""
    rng = np.random.default_rng(len(batch) * 100 + d_in * 10 + d_out)
    x = rng.standard_normal(batch + (d_in,))
    W = rng.standard_normal((d_in, d_out))
    b = rng.standard_normal(d_out) if bias else None
    y, _ = linear.forward(x, W, b)
    expected = np.einsum("...i,ij->...j", x, W) + (0.0 if b is None else b)
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-13)
    assert run_gradcheck(x, W, b).ok


F64 = np.float64
BAD_INPUTS = {
    # id: (x, W, b, message the ValueError must contain)
    "W-rows-mismatch": (np.ones((2, 5)), np.ones((4, 3)), None,
                        "W: expected shape (5, *), got (4, 3)"),
    "W-rank-1": (np.ones((2, 4)), np.ones(4), None, "W: expected 2 dimensions"),
    "W-rank-3": (np.ones((2, 4)), np.ones((4, 3, 1)), None, "W: expected 2 dimensions"),
    "x-rank-0": (np.float64(1.0), np.ones((1, 3)), None, "x: expected at least 1 dimensions"),
    "b-wrong-size": (np.ones((2, 4)), np.ones((4, 3)), np.ones(4), "b: expected shape (3), got"),
    "b-rank-2": (np.ones((2, 4)), np.ones((4, 3)), np.ones((1, 3)), "b: expected 1 dimensions"),
    "x-nan": (np.array([[1.0, np.nan, 0, 0]]), np.ones((4, 3)), None, "x: contains nan or inf"),
    "W-inf": (np.ones((2, 4)), np.full((4, 3), np.inf), None, "W: contains nan or inf"),
    "b-nan": (np.ones((2, 4)), np.ones((4, 3)), np.full(3, np.nan), "b: contains nan or inf"),
    "x-int-dtype": (np.ones((2, 4), dtype=int), np.ones((4, 3)), None, "x: expected a float32"),
    "dtype-mix-x-W": (np.ones((2, 4), np.float32), np.ones((4, 3)), None,
                      "x: float32, W: float64"),
    "dtype-mix-b": (np.ones((2, 4)), np.ones((4, 3)), np.ones(3, np.float32), "b: float32"),
    "W-none": (np.ones((2, 4)), None, None, "W: expected a NumPy array"),
}


@pytest.mark.parametrize("x, W, b, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises(x, W, b, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        linear.forward(x, W, b)


BAD_UPSTREAM = {
    "dy-wrong-width": (np.ones((2, 4)), "dy: expected shape (2, 3), got (2, 4)"),
    "dy-wrong-batch": (np.ones((3, 3)), "dy: expected shape (2, 3), got (3, 3)"),
    "dy-nan": (np.full((2, 3), np.nan), "dy: contains nan or inf"),
    "dy-float32": (np.ones((2, 3), np.float32), "dy: float32, x: float64"),
}


@pytest.mark.parametrize("dy, message", BAD_UPSTREAM.values(), ids=BAD_UPSTREAM.keys())
def test_bad_upstream_raises(dy, message):
    _, cache = linear.forward(np.ones((2, 4)), np.ones((4, 3)), np.ones(3))
    with pytest.raises(ValueError, match=re.escape(message)):
        linear.backward(dy, cache)
