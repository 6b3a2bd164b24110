"""Tests for gla_np.swish: swish(x) = x * sigma(x) (SiLU), stable for any finite x."""

import re

import numpy as np
import pytest

from gla_np import gradcheck, swish

SHAPES = [(), (7,), (2, 3, 4)]
DTYPES = [np.float32, np.float64]


def shape_id(shape):
    return "shape(" + ",".join(map(str, shape)) + ")"


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_gradcheck(shape):
    x = np.asarray(3.0 * np.random.default_rng(0).standard_normal(shape))
    report = gradcheck(swish.forward, swish.backward, {"x": x})
    assert max(t.rel_err for t in report.tensors) <= 1e-7, str(report)


def test_forward_matches_textbook_formula():
    x = np.linspace(-30.0, 30.0, 121)
    y, _ = swish.forward(x)
    np.testing.assert_allclose(y, x / (1.0 + np.exp(-x)), rtol=1e-15, atol=0)


def test_backward_matches_closed_form():
    """swish'(x) = (1 + exp(-x) + x exp(-x)) / (1 + exp(-x))^2, written independently."""
    rng = np.random.default_rng(1)
    x = np.linspace(-15.0, 15.0, 61)
    dy = rng.standard_normal(x.shape)
    _, cache = swish.forward(x)
    e = np.exp(-x)
    expected = dy * (1.0 + e + x * e) / (1.0 + e) ** 2
    np.testing.assert_allclose(swish.backward(dy, cache), expected, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_float32_matches_float64(shape):
    rng = np.random.default_rng(2)
    x = np.asarray(3.0 * rng.standard_normal(shape))
    dy = np.asarray(rng.standard_normal(shape))
    y64, c64 = swish.forward(x)
    y32, c32 = swish.forward(x.astype(np.float32))
    dx32 = swish.backward(dy.astype(np.float32), c32)
    assert y32.dtype == np.float32 and dx32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx32, swish.backward(dy, c64), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_stable_at_plus_minus_1000(dtype):
    """swish(-1000) = 0 with slope 0; swish(1000) = 1000 with slope 1; no flag raised."""
    x = np.array([-1000.0, 1000.0], dtype=dtype)
    dy = np.array([0.7, -1.3], dtype=dtype)
    with np.errstate(all="raise"):
        y, cache = swish.forward(x)
        dx = swish.backward(dy, cache)
    assert y.dtype == dtype and dx.dtype == dtype
    np.testing.assert_array_equal(y, [0.0, 1000.0])
    np.testing.assert_array_equal(dx, [0.0, dy[1]])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_wide_sweep_finite(dtype):
    """Every x in [-1000, 1000], including where sigma(x) is subnormal, stays quiet and finite."""
    x = np.concatenate([np.linspace(-1000.0, 1000.0, 4001), [-1.2785]]).astype(dtype)
    with np.errstate(all="raise"):
        y, cache = swish.forward(x)
        dx = swish.backward(np.ones_like(x), cache)
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    assert -0.2784 > y.min() >= -0.27847  # x sigma(x) has its minimum -0.278465 at x = -1.2785
    assert dx.min() > -0.1 and dx.max() < 1.1  # swish' lies in about [-0.0998, 1.0998]


def test_upstream_none_means_zero():
    x = np.random.default_rng(3).standard_normal((2, 3))
    _, cache = swish.forward(x)
    dx = swish.backward(None, cache)
    assert dx.shape == x.shape and not dx.any()


BAD_INPUTS = {
    "x-nan": (np.array([0.0, np.nan]), "x: contains nan or inf"),
    "x-inf": (np.array([-np.inf]), "x: contains nan or inf"),
    "x-int-dtype": (np.array([1, 2]), "x: expected a float32 or float64 array"),
    "x-none": (None, "x: expected a NumPy array"),
}


@pytest.mark.parametrize("x, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises(x, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        swish.forward(x)


BAD_UPSTREAM = {
    "dy-wrong-shape": (np.ones((3, 2)), "dy: expected shape (2, 3), got (3, 2)"),
    "dy-inf": (np.full((2, 3), np.inf), "dy: contains nan or inf"),
    "dy-float32": (np.ones((2, 3), np.float32), "dy: float32"),
}


@pytest.mark.parametrize("dy, message", BAD_UPSTREAM.values(), ids=BAD_UPSTREAM.keys())
def test_bad_upstream_raises(dy, message):
    _, cache = swish.forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=re.escape(message)):
        swish.backward(dy, cache)
