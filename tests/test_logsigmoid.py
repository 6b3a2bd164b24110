"""Tests for gla_np.logsigmoid: log sigma(x) = min(x, 0) - log1p(exp(-|x|)), stable for any x."""

import re

import numpy as np
import pytest

from gla_np import gradcheck, logsigmoid

SHAPES = [(), (7,), (2, 3, 4)]
DTYPES = [np.float32, np.float64]


def shape_id(shape):
    return "shape(" + ",".join(map(str, shape)) + ")"


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_gradcheck(shape):
    x = np.asarray(3.0 * np.random.default_rng(0).standard_normal(shape))
    report = gradcheck(logsigmoid.forward, logsigmoid.backward, {"x": x})
    assert max(t.rel_err for t in report.tensors) <= 1e-7, str(report)


def test_forward_matches_textbook_formula():
    """The definition -softplus(-x) = -log1p(exp(-x)), evaluated where exp(-x) cannot overflow."""
    x = np.linspace(-30.0, 30.0, 121)
    y, _ = logsigmoid.forward(x)
    np.testing.assert_allclose(y, -np.log1p(np.exp(-x)), rtol=1e-14, atol=0)


def test_forward_matches_logaddexp_everywhere():
    """An independent stable formula, -log(e^0 + e^-x) = -logaddexp(0, -x), over a wide range."""
    x = np.linspace(-1000.0, 1000.0, 2001)
    y, _ = logsigmoid.forward(x)
    np.testing.assert_allclose(y, -np.logaddexp(0.0, -x), rtol=1e-15, atol=1e-300)
    assert (y <= 0).all()


def test_backward_matches_closed_form():
    """d/dx log sigma(x) = 1 / (1 + exp(x)), written independently."""
    rng = np.random.default_rng(1)
    x = np.linspace(-15.0, 15.0, 61)
    dy = rng.standard_normal(x.shape)
    _, cache = logsigmoid.forward(x)
    np.testing.assert_allclose(logsigmoid.backward(dy, cache), dy / (1.0 + np.exp(x)),
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_float32_matches_float64(shape):
    rng = np.random.default_rng(2)
    x = np.asarray(3.0 * rng.standard_normal(shape))
    dy = np.asarray(rng.standard_normal(shape))
    y64, c64 = logsigmoid.forward(x)
    y32, c32 = logsigmoid.forward(x.astype(np.float32))
    dx32 = logsigmoid.backward(dy.astype(np.float32), c32)
    assert y32.dtype == np.float32 and dx32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx32, logsigmoid.backward(dy, c64), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_stable_at_plus_minus_1000(dtype):
    """logsigmoid(-1000) = -1000 with slope 1; logsigmoid(1000) = 0 with slope 0; no flag."""
    x = np.array([-1000.0, 1000.0], dtype=dtype)
    dy = np.array([0.7, -1.3], dtype=dtype)
    with np.errstate(all="raise"):
        y, cache = logsigmoid.forward(x)
        dx = logsigmoid.backward(dy, cache)
    assert y.dtype == dtype and dx.dtype == dtype
    np.testing.assert_array_equal(y, [-1000.0, 0.0])
    np.testing.assert_array_equal(dx, [dy[0], 0.0])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_wide_sweep_finite_and_monotone(dtype):
    x = np.linspace(-1000.0, 1000.0, 4001).astype(dtype)
    with np.errstate(all="raise"):
        y, cache = logsigmoid.forward(x)
        dx = logsigmoid.backward(np.ones_like(x), cache)
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    assert (y <= 0).all() and (np.diff(y) >= 0).all()
    assert (dx >= 0).all() and (dx <= 1).all()


def test_upstream_none_means_zero():
    x = np.random.default_rng(3).standard_normal((2, 3))
    _, cache = logsigmoid.forward(x)
    dx = logsigmoid.backward(None, cache)
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
        logsigmoid.forward(x)


BAD_UPSTREAM = {
    "dy-wrong-shape": (np.ones((3, 2)), "dy: expected shape (2, 3), got (3, 2)"),
    "dy-nan": (np.full((2, 3), np.nan), "dy: contains nan or inf"),
    "dy-float32": (np.ones((2, 3), np.float32), "dy: float32"),
}


@pytest.mark.parametrize("dy, message", BAD_UPSTREAM.values(), ids=BAD_UPSTREAM.keys())
def test_bad_upstream_raises(dy, message):
    _, cache = logsigmoid.forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=re.escape(message)):
        logsigmoid.backward(dy, cache)
