"""Tests for gla_np.layernorm: (x - mean) / sqrt(var + eps) * w + b over the last axis."""

import re

import numpy as np
import pytest

from gla_np import gradcheck, layernorm

D = 5
BATCH_SHAPES = [(), (4,), (2, 3)]


def batch_id(shape):
    return "batch(" + ",".join(map(str, shape)) + ")"


def make_inputs(rng, batch, dtype=np.float64):
    x = (2.0 * rng.standard_normal(batch + (D,)) + 0.5).astype(dtype)
    w = (1.0 + 0.3 * rng.standard_normal(D)).astype(dtype)
    b = (0.3 * rng.standard_normal(D)).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("eps", [1e-5, 0.5], ids=["eps1e-5", "eps0.5"])
@pytest.mark.parametrize("batch", BATCH_SHAPES, ids=batch_id)
def test_gradcheck(batch, eps):
    x, w, b = make_inputs(np.random.default_rng(0), batch)
    report = gradcheck(lambda x, w, b: layernorm.forward(x, w, b, eps=eps), layernorm.backward,
                       {"x": x, "w": w, "b": b})
    assert max(t.rel_err for t in report.tensors) <= 1e-7, str(report)


@pytest.mark.parametrize("batch", BATCH_SHAPES, ids=batch_id)
def test_forward_matches_direct_statistics(batch):
    x, w, b = make_inputs(np.random.default_rng(1), batch)
    y, _ = layernorm.forward(x, w, b, eps=1e-5)
    mean = np.mean(x, axis=-1, keepdims=True)
    var = np.var(x, axis=-1, keepdims=True)  # biased (ddof=0), as LayerNorm defines it
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5) * w + b, rtol=1e-13, atol=1e-13)


def test_rows_are_normalized():
    """With w = 1, b = 0: each row has mean 0 and variance var / (var + eps)."""
    x = 3.0 * np.random.default_rng(2).standard_normal((4, 6)) - 1.0
    y, _ = layernorm.forward(x, np.ones(6), np.zeros(6), eps=1e-5)
    var = x.var(axis=-1)
    np.testing.assert_allclose(y.mean(axis=-1), 0.0, atol=1e-14)
    np.testing.assert_allclose(y.var(axis=-1), var / (var + 1e-5), rtol=1e-13)


def test_dw_db_sum_over_all_leading_axes():
    """dw, db of a (2, 3, D) input equal the sums of the per-row gradients."""
    rng = np.random.default_rng(3)
    x, w, b = make_inputs(rng, (2, 3))
    dy = rng.standard_normal(x.shape)
    _, cache = layernorm.forward(x, w, b)
    _, dw, db = layernorm.backward(dy, cache)
    dw_rows, db_rows = 0.0, 0.0
    for idx in np.ndindex(2, 3):
        _, c = layernorm.forward(x[idx], w, b)
        _, dw_i, db_i = layernorm.backward(dy[idx], c)
        dw_rows, db_rows = dw_rows + dw_i, db_rows + db_i
    np.testing.assert_allclose(dw, dw_rows, rtol=1e-13)
    np.testing.assert_allclose(db, db_rows, rtol=1e-13)


@pytest.mark.parametrize("batch", BATCH_SHAPES, ids=batch_id)
def test_float32_matches_float64(batch):
    rng = np.random.default_rng(4)
    x, w, b = make_inputs(rng, batch)
    dy = rng.standard_normal(x.shape)
    y64, c64 = layernorm.forward(x, w, b)
    y32, c32 = layernorm.forward(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-5)
    for g32, g64 in zip(layernorm.backward(dy.astype(np.float32), c32),
                        layernorm.backward(dy, c64)):
        assert g32.dtype == np.float32
        np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-5)


def test_float32_large_offset():
    """Mean 1000, std 1: the two-pass variance keeps float32 accurate (E[x^2] - E[x]^2 does not)."""
    x = 1000.0 + np.random.default_rng(5).standard_normal((3, 8))
    w, b = np.ones(8), np.zeros(8)
    y64, _ = layernorm.forward(x, w, b)
    y32, _ = layernorm.forward(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32))
    np.testing.assert_allclose(y32, y64, atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_scaled_by_1000(dtype):
    """x -> 1000 x (values up to +-1000): y is unchanged (eps tiny), dx shrinks by 1000."""
    rng = np.random.default_rng(6)
    x, w, b = make_inputs(rng, (3,), dtype)
    x = x / np.abs(x).max()
    dy = rng.standard_normal(x.shape).astype(dtype)
    with np.errstate(all="raise"):
        y1, c1 = layernorm.forward(x, w, b, eps=1e-30)
        y2, c2 = layernorm.forward(1000 * x, w, b, eps=1e-30)
        dx1, dw1, db1 = layernorm.backward(dy, c1)
        dx2, dw2, db2 = layernorm.backward(dy, c2)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.isfinite(dx2).all()
    np.testing.assert_allclose(y2, y1, rtol=tol, atol=tol)
    np.testing.assert_allclose(1000 * dx2, dx1, rtol=10 * tol, atol=10 * tol)
    np.testing.assert_allclose(dw2, dw1, rtol=tol, atol=tol)
    np.testing.assert_array_equal(db2, db1)


def test_upstream_none_means_zero():
    x, w, b = make_inputs(np.random.default_rng(7), (2, 3))
    _, cache = layernorm.forward(x, w, b)
    dx, dw, db = layernorm.backward(None, cache)
    assert dx.shape == x.shape and dw.shape == db.shape == (D,)
    assert not (dx.any() or dw.any() or db.any())


X, W, B = np.ones((2, 4)), np.ones(4), np.zeros(4)
BAD_INPUTS = {
    "w-wrong-size": ((X, np.ones(3), B), {}, "w: expected shape (4), got (3,)"),
    "w-rank-2": ((X, np.ones((1, 4)), B), {}, "w: expected 1 dimensions"),
    "b-wrong-size": ((X, W, np.zeros(5)), {}, "b: expected shape (4), got (5,)"),
    "b-none": ((X, W, None), {}, "b: expected a NumPy array"),
    "x-rank-0": ((np.float64(1.0), W, B), {}, "x: expected at least 1 dimensions"),
    "x-nan": ((np.full((2, 4), np.nan), W, B), {}, "x: contains nan or inf"),
    "w-inf": ((X, np.full(4, np.inf), B), {}, "w: contains nan or inf"),
    "x-int-dtype": ((np.ones((2, 4), int), W, B), {}, "x: expected a float32 or float64"),
    "dtype-mix": ((X, W.astype(np.float32), B), {}, "w: float32"),
    "eps-zero": ((X, W, B), {"eps": 0.0}, "eps: expected a positive finite number"),
    "eps-negative": ((X, W, B), {"eps": -1e-5}, "eps: expected a positive finite number"),
    "eps-nan": ((X, W, B), {"eps": float("nan")}, "eps: expected a positive finite number"),
    "eps-string": ((X, W, B), {"eps": "1e-5"}, "eps: expected a positive finite number"),
}


@pytest.mark.parametrize("args, kwargs, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises(args, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        layernorm.forward(*args, **kwargs)

# A bad upstream gradient (shape, nan, dtype): tests/test_norms.py
