"""Tests for gla_np.sigmoid: sigma(x) = 1 / (1 + exp(-x)), stable for any finite x."""

import re

import numpy as np
import pytest

from gla_np import gradcheck, sigmoid
from gla_np.sigmoid import stable_sigmoid

SHAPES = [(), (7,), (2, 3, 4)]
DTYPES = [np.float32, np.float64]


def shape_id(shape):
    return "shape(" + ",".join(map(str, shape)) + ")"


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_gradcheck(shape):
    x = np.asarray(3.0 * np.random.default_rng(0).standard_normal(shape))
    report = gradcheck(sigmoid.forward, sigmoid.backward, {"x": x})
    assert max(t.rel_err for t in report.tensors) <= 1e-7, str(report)


def test_forward_matches_textbook_formula():
    """Where the naive formula cannot overflow, the two agree to rounding."""
    x = np.linspace(-30.0, 30.0, 121)
    y, _ = sigmoid.forward(x)
    np.testing.assert_allclose(y, 1.0 / (1.0 + np.exp(-x)), rtol=1e-15, atol=0)


def test_backward_matches_closed_form():
    """sigma'(x) = exp(-x) / (1 + exp(-x))^2, written independently of y * (1 - y)."""
    rng = np.random.default_rng(1)
    x = np.linspace(-15.0, 15.0, 61)
    dy = rng.standard_normal(x.shape)
    _, cache = sigmoid.forward(x)
    expected = dy * np.exp(-x) / (1.0 + np.exp(-x)) ** 2
    np.testing.assert_allclose(sigmoid.backward(dy, cache), expected, rtol=1e-9, atol=1e-15)


def test_symmetry():
    """sigma(-x) = 1 - sigma(x), up to the rounding of the subtraction (one ulp of 1)."""
    x = np.linspace(-40.0, 40.0, 81)
    eps = np.finfo(np.float64).eps
    np.testing.assert_allclose(stable_sigmoid(-x), 1.0 - stable_sigmoid(x), rtol=0, atol=eps)


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_float32_matches_float64(shape):
    rng = np.random.default_rng(2)
    x = np.asarray(3.0 * rng.standard_normal(shape))
    dy = np.asarray(rng.standard_normal(shape))
    y64, c64 = sigmoid.forward(x)
    y32, c32 = sigmoid.forward(x.astype(np.float32))
    dx32 = sigmoid.backward(dy.astype(np.float32), c32)
    assert y32.dtype == np.float32 and dx32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dx32, sigmoid.backward(dy, c64), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_stable_at_plus_minus_1000(dtype):
    """Exact limits 0 and 1, slope 0, and no floating-point flag raised (not even underflow)."""
    x = np.array([-1000.0, 1000.0], dtype=dtype)
    dy = np.array([0.7, -1.3], dtype=dtype)
    with np.errstate(all="raise"):
        y, cache = sigmoid.forward(x)
        dx = sigmoid.backward(dy, cache)
    assert y.dtype == dtype and dx.dtype == dtype
    np.testing.assert_array_equal(y, [0.0, 1.0])
    np.testing.assert_array_equal(dx, [0.0, 0.0])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_wide_sweep_finite_and_monotone(dtype):
    x = np.linspace(-1000.0, 1000.0, 4001).astype(dtype)
    with np.errstate(all="raise"):
        y, cache = sigmoid.forward(x)
        dx = sigmoid.backward(np.ones_like(x), cache)
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    assert (y >= 0).all() and (y <= 1).all() and (np.diff(y) >= 0).all()
    assert (dx >= 0).all() and dx.max() == pytest.approx(0.25)


def test_upstream_none_means_zero():
    x = np.random.default_rng(3).standard_normal((2, 3))
    _, cache = sigmoid.forward(x)
    dx = sigmoid.backward(None, cache)
    assert dx.shape == x.shape and not dx.any()


BAD_INPUTS = {
    "x-nan": (np.array([0.0, np.nan]), "x: contains nan or inf"),
    "x-inf": (np.array([np.inf]), "x: contains nan or inf"),
    "x-int-dtype": (np.array([1, 2]), "x: expected a float32 or float64 array"),
    "x-none": (None, "x: expected a NumPy array"),
}


@pytest.mark.parametrize("x, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises(x, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        sigmoid.forward(x)


BAD_UPSTREAM = {
    "dy-wrong-shape": (np.ones((3, 2)), "dy: expected shape (2, 3), got (3, 2)"),
    "dy-nan": (np.full((2, 3), np.nan), "dy: contains nan or inf"),
    "dy-float32": (np.ones((2, 3), np.float32), "dy: float32"),
}


@pytest.mark.parametrize("dy, message", BAD_UPSTREAM.values(), ids=BAD_UPSTREAM.keys())
def test_bad_upstream_raises(dy, message):
    _, cache = sigmoid.forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=re.escape(message)):
        sigmoid.backward(dy, cache)
