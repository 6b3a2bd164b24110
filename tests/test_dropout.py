"""Tests for gla_np.dropout: gradient, determinism, expectation, identity mode, bad input."""

import re

import numpy as np
import pytest

from gla_np import dropout, gradcheck


def _forward_with_seed(rate, seed, training=True):
    """A forward that draws the same mask on every call, as gradcheck needs."""
    return lambda x: dropout.forward(x, rate, np.random.default_rng(seed), training)


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 0.9], ids=lambda r: f"rate{r}")
@pytest.mark.parametrize("shape", [(7,), (2, 3, 4)], ids=lambda s: "x" + "x".join(map(str, s)))
def test_gradcheck_training(rate, shape):
    x = np.random.default_rng(0).standard_normal(shape)
    report = gradcheck(_forward_with_seed(rate, seed=1), dropout.backward, {"x": x})
    assert max(t.rel_err for t in report.tensors) <= 1e-7


def test_gradcheck_not_training():
    x = np.random.default_rng(0).standard_normal((3, 5))
    report = gradcheck(_forward_with_seed(0.5, seed=1, training=False), dropout.backward, {"x": x})
    assert report.ok


def test_kept_entries_scaled_and_dropped_entries_zero():
    x = np.random.default_rng(0).standard_normal((50, 40)) + 3.0  # no entry is 0 by chance
    y, cache = dropout.forward(x, 0.3, np.random.default_rng(2))
    kept = y != 0
    assert np.array_equal(kept, cache.keep)  # the cache stores the mask forward used
    np.testing.assert_allclose(y[kept], x[kept] / 0.7, rtol=1e-15)
    assert 0 < kept.mean() < 1


def test_same_seed_same_mask_different_seed_different_mask():
    x = np.ones((20, 30))
    y1, c1 = dropout.forward(x, 0.5, np.random.default_rng(7))
    y2, c2 = dropout.forward(x, 0.5, np.random.default_rng(7))
    y3, c3 = dropout.forward(x, 0.5, np.random.default_rng(8))
    assert np.array_equal(c1.keep, c2.keep) and np.array_equal(y1, y2)
    assert not np.array_equal(c1.keep, c3.keep)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8], ids=lambda r: f"rate{r}")
def test_expectation_preserved(rate):
    x = np.full(200_000, 2.0)
    y, cache = dropout.forward(x, rate, np.random.default_rng(3))
    assert abs(cache.keep.mean() - (1 - rate)) < 0.01
    assert abs(y.mean() - 2.0) < 0.05  # inverted scaling keeps E[y] = x


@pytest.mark.parametrize("rate, training", [(0.5, False), (0.0, True), (0.0, False)],
                         ids=["eval", "rate0-train", "rate0-eval"])
def test_identity_uses_no_randomness(rate, training):
    x = np.random.default_rng(0).standard_normal((4, 6))
    rng = np.random.default_rng(5)
    state_before = rng.bit_generator.state
    y, cache = dropout.forward(x, rate, rng, training=training)
    assert rng.bit_generator.state == state_before
    assert np.array_equal(y, x) and y is not x
    dy = np.random.default_rng(1).standard_normal(x.shape)
    dx = dropout.backward(dy, cache)
    assert np.array_equal(dx, dy) and dx is not dy
    y_none, _ = dropout.forward(x, rate, None, training=training)  # no generator needed
    assert np.array_equal(y_none, x)


@pytest.mark.parametrize("shape", [(), (3, 4)], ids=["0d", "3x4"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_float32_keeps_dtype(training, shape):
    x = np.asarray(np.random.default_rng(0).standard_normal(shape), dtype=np.float32)
    y, cache = dropout.forward(x, 0.4, np.random.default_rng(1), training=training)
    dx = dropout.backward(np.ones_like(y), cache)
    assert y.dtype == np.float32 and dx.dtype == np.float32


def test_none_upstream_gives_zero():
    x = np.ones((2, 3), dtype=np.float32)
    _, cache = dropout.forward(x, 0.5, np.random.default_rng(0))
    dx = dropout.backward(None, cache)
    assert dx.shape == (2, 3) and dx.dtype == np.float32 and not dx.any()


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, "0.5", True, None],
                         ids=["neg", "one", "above1", "str", "bool", "none"])
def test_bad_rate(rate):
    with pytest.raises(ValueError, match="rate"):
        dropout.forward(np.ones(3), rate, np.random.default_rng(0))


@pytest.mark.parametrize("rng", [None, 0, np.random.RandomState(0)],
                         ids=["none", "int-seed", "legacy-RandomState"])
def test_bad_rng_when_needed(rng):
    with pytest.raises(ValueError, match="rng"):
        dropout.forward(np.ones(3), 0.5, rng)


def test_bad_x_and_dy():
    with pytest.raises(ValueError, match="x"):
        dropout.forward(np.array([1.0, np.nan]), 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="x"):
        dropout.forward(np.array([1, 2]), 0.5, np.random.default_rng(0))  # integer dtype
    _, cache = dropout.forward(np.ones((2, 3)), 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="dy"):
        dropout.backward(np.ones((3, 2)), cache)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("x_dtype, dy_dtype", [(np.float32, np.float64), (np.float64, np.float32)],
                         ids=["f32-forward-f64-dy", "f64-forward-f32-dy"])
def test_dy_of_another_dtype_is_refused_not_cast(training, x_dtype, dy_dtype):
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(x_dtype)
    y, cache = dropout.forward(x, 0.5, np.random.default_rng(1), training=training)
    message = (f"dy: expected dtype {np.dtype(x_dtype)} (the forward's dtype), "
               f"got {np.dtype(dy_dtype)}")
    with pytest.raises(ValueError, match=re.escape(message)):
        dropout.backward(np.ones(y.shape, dtype=dy_dtype), cache)


@pytest.mark.parametrize("rate, training, identity",
                         [(0.5, False, True), (0.0, True, True), (0.0, False, True),
                          (0.5, True, False)], ids=["eval", "rate0-train", "rate0-eval", "train"])
def test_is_identity_and_its_cache_are_what_forward_does(rate, training, identity):
    # the layers skip forward where is_identity says so and keep identity_cache instead
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    assert dropout.is_identity(rate, training) is identity
    _, cache = dropout.forward(x, rate, np.random.default_rng(1), training=training)
    assert (cache.keep is None) is identity
    if identity:
        assert dropout.identity_cache(x, rate) == cache
