"""Tests for gla_np.swish: swish(x) = x * sigma(x) (SiLU), stable for any finite x."""

import numpy as np
import pytest

from gla_np import swish

DTYPES = [np.float32, np.float64]


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

# Gradient check, float32, None upstream and bad input: tests/test_activations.py
