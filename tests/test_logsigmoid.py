"""Tests for gla_np.logsigmoid: log sigma(x) = min(x, 0) - log1p(exp(-|x|)), stable for any x."""

import numpy as np
import pytest

from gla_np import logsigmoid

DTYPES = [np.float32, np.float64]


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

# Gradient check, float32, None upstream and bad input: tests/test_activations.py


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_forward_is_bitwise_the_formula_with_min_against_a_scalar_zero(dtype):
    # the code forms min(x, 0) against an array of zeros (a faster NumPy loop): bitwise the same
    # as against the scalar 0, signed zeros, subnormals and the largest finite values included,
    # in the vectorised body (arrays of 1,000 and more) and in the short tail
    finfo = np.finfo(dtype)
    special = [0.0, -0.0, finfo.smallest_subnormal, -finfo.smallest_subnormal, finfo.tiny,
               -finfo.tiny, 1.0, -1.0, 30.0, -30.0, 200.0, -200.0, finfo.max, -finfo.max]
    rng = np.random.default_rng(9)
    for n in (3, 1000, 70001):
        x = np.concatenate([special, 40 * rng.standard_normal(n)]).astype(dtype)
        rng.shuffle(x)
        zero = dtype(0)
        with np.errstate(under="ignore"):
            want = np.minimum(x, zero) - np.log1p(np.exp(-np.abs(x)))
        y, _ = logsigmoid.forward(x)
        assert y.dtype == dtype
        np.testing.assert_array_equal(y.view(f"u{x.itemsize}"), want.view(f"u{x.itemsize}"))
