"""Tests for gla_np.rmsnorm: x / sqrt(mean(x^2) + eps) * w over the last axis, incl. per head."""

import re

import numpy as np
import pytest

from gla_np import gradcheck, rmsnorm

D = 5
BATCH_SHAPES = [(), (4,), (2, 3)]


def batch_id(shape):
    return "batch(" + ",".join(map(str, shape)) + ")"


def make_inputs(rng, shape, dtype=np.float64):
    x = (2.0 * rng.standard_normal(shape) + 0.5).astype(dtype)
    w = (1.0 + 0.3 * rng.standard_normal(shape[-1])).astype(dtype)
    return x, w


@pytest.mark.parametrize("eps", [1e-6, 0.5], ids=["eps1e-6", "eps0.5"])
@pytest.mark.parametrize("batch", BATCH_SHAPES, ids=batch_id)
def test_gradcheck(batch, eps):
    x, w = make_inputs(np.random.default_rng(0), batch + (D,))
    report = gradcheck(lambda x, w: rmsnorm.forward(x, w, eps=eps), rmsnorm.backward,
                       {"x": x, "w": w})
    assert max(t.rel_err for t in report.tensors) <= 1e-7, str(report)


@pytest.mark.parametrize("batch", BATCH_SHAPES, ids=batch_id)
def test_forward_matches_norm(batch):
    """rms(x) = ||x||_2 / sqrt(D), computed with np.linalg.norm."""
    x, w = make_inputs(np.random.default_rng(1), batch + (D,))
    y, _ = rmsnorm.forward(x, w, eps=1e-6)
    rms = np.linalg.norm(x, axis=-1, keepdims=True) / np.sqrt(D)
    np.testing.assert_allclose(y, x / np.sqrt(rms**2 + 1e-6) * w, rtol=1e-13, atol=1e-13)


# Per head, one weight shared by all heads: x (B, T, H, V), w (V,).
B, T, H, V = 2, 3, 3, 4


def test_per_head_gradcheck():
    x, w = make_inputs(np.random.default_rng(2), (B, T, H, V))
    report = gradcheck(rmsnorm.forward, rmsnorm.backward, {"x": x, "w": w})
    assert max(t.rel_err for t in report.tensors) <= 1e-7, str(report)


def test_per_head_matches_head_by_head():
    """Normalizing (B, T, H, V) at once equals normalizing each head alone with the same w;
    dw is the SUM over heads (and batch and time) of the per-head weight gradients."""
    rng = np.random.default_rng(3)
    x, w = make_inputs(rng, (B, T, H, V))
    dy = rng.standard_normal(x.shape)
    y, cache = rmsnorm.forward(x, w)
    dx, dw = rmsnorm.backward(dy, cache)
    dw_heads = []
    for h in range(H):
        y_h, cache_h = rmsnorm.forward(x[:, :, h], w)  # (B, T, V): one head
        dx_h, dw_h = rmsnorm.backward(dy[:, :, h], cache_h)
        np.testing.assert_allclose(y[:, :, h], y_h, rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(dx[:, :, h], dx_h, rtol=1e-14, atol=1e-14)
        dw_heads.append(dw_h)
    np.testing.assert_allclose(dw, np.sum(dw_heads, axis=0), rtol=1e-13)
    assert not np.allclose(dw, dw_heads[0])  # one head alone is not the answer


@pytest.mark.parametrize("batch", BATCH_SHAPES, ids=batch_id)
def test_float32_matches_float64(batch):
    rng = np.random.default_rng(4)
    x, w = make_inputs(rng, batch + (D,))
    dy = rng.standard_normal(x.shape)
    y64, c64 = rmsnorm.forward(x, w)
    y32, c32 = rmsnorm.forward(x.astype(np.float32), w.astype(np.float32))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-5)
    for g32, g64 in zip(rmsnorm.backward(dy.astype(np.float32), c32), rmsnorm.backward(dy, c64)):
        assert g32.dtype == np.float32
        np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_scaled_by_1000(dtype):
    """x -> 1000 x (values up to +-1000): y is unchanged (eps tiny), dx shrinks by 1000."""
    rng = np.random.default_rng(5)
    x, w = make_inputs(rng, (3, D), dtype)
    x = x / np.abs(x).max()
    dy = rng.standard_normal(x.shape).astype(dtype)
    with np.errstate(all="raise"):
        y1, c1 = rmsnorm.forward(x, w, eps=1e-30)
        y2, c2 = rmsnorm.forward(1000 * x, w, eps=1e-30)
        dx1, dw1 = rmsnorm.backward(dy, c1)
        dx2, dw2 = rmsnorm.backward(dy, c2)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.isfinite(dx2).all()
    np.testing.assert_allclose(y2, y1, rtol=tol, atol=tol)
    np.testing.assert_allclose(1000 * dx2, dx1, rtol=10 * tol, atol=10 * tol)
    np.testing.assert_allclose(dw2, dw1, rtol=tol, atol=tol)


def test_zero_row_is_finite():
    """An all-zero row gives y = 0 and dx = dy * w / sqrt(eps): finite because eps > 0."""
    w = np.array([1.0, 2.0, 3.0])
    dy = np.array([0.5, -1.0, 2.0])
    y, cache = rmsnorm.forward(np.zeros(3), w, eps=1e-6)
    dx, dw = rmsnorm.backward(dy, cache)
    np.testing.assert_array_equal(y, 0.0)
    np.testing.assert_allclose(dx, dy * w / np.sqrt(1e-6), rtol=1e-14)
    np.testing.assert_array_equal(dw, 0.0)


def test_upstream_none_means_zero():
    x, w = make_inputs(np.random.default_rng(6), (B, T, H, V))
    _, cache = rmsnorm.forward(x, w)
    dx, dw = rmsnorm.backward(None, cache)
    assert dx.shape == x.shape and dw.shape == (V,)
    assert not (dx.any() or dw.any())


X, W = np.ones((2, 4)), np.ones(4)
BAD_INPUTS = {
    "w-wrong-size": ((X, np.ones(3)), {}, "w: expected shape (4), got (3,)"),
    "w-per-head-shape": ((np.ones((2, 3, 4)), np.ones((3, 4))), {}, "w: expected 1 dimensions"),
    "w-none": ((X, None), {}, "w: expected a NumPy array"),
    "x-rank-0": ((np.float64(1.0), W), {}, "x: expected at least 1 dimensions"),
    "x-inf": ((np.full((2, 4), -np.inf), W), {}, "x: contains nan or inf"),
    "w-nan": ((X, np.full(4, np.nan)), {}, "w: contains nan or inf"),
    "x-int-dtype": ((np.ones((2, 4), int), W), {}, "x: expected a float32 or float64"),
    "dtype-mix": ((X.astype(np.float32), W), {}, "x: float32, w: float64"),
    "eps-zero": ((X, W), {"eps": 0}, "eps: expected a positive finite number"),
    "eps-inf": ((X, W), {"eps": float("inf")}, "eps: expected a positive finite number"),
    "eps-bool": ((X, W), {"eps": True}, "eps: expected a positive finite number"),
}


@pytest.mark.parametrize("args, kwargs, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises(args, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        rmsnorm.forward(*args, **kwargs)

# A bad upstream gradient (shape, nan, dtype): tests/test_norms.py
