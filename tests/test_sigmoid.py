"""Tests for gla_np.sigmoid: sigma(x) = 1 / (1 + exp(-x)), stable for any finite x."""

import numpy as np
import pytest

from gla_np import sigmoid
from gla_np.ops.sigmoid import stable_sigmoid

DTYPES = [np.float32, np.float64]


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

# Gradient check, float32, None upstream and bad input: tests/test_activations.py
