"""The contract shared by the three elementwise activations: sigmoid, swish, logsigmoid.

Each module's own file tests its formula, its closed-form derivative and its stability at
+-1000; what every elementwise op must do alike is tested here once, for all three.
"""

import re

import numpy as np
import pytest

from gla_np import gradcheck, logsigmoid, sigmoid, swish

OPS = [sigmoid, swish, logsigmoid]
SHAPES = [(), (7,), (2, 3, 4)]


def op_id(op):
    return op.__name__.rsplit(".", 1)[-1]


def shape_id(shape):
    return "shape(" + ",".join(map(str, shape)) + ")"


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("op", OPS, ids=op_id)
def test_gradcheck(op, shape):
    x = np.asarray(3.0 * np.random.default_rng(0).standard_normal(shape))
    report = gradcheck(op.forward, op.backward, {"x": x})
    assert max(t.rel_err for t in report.tensors) <= 1e-7, str(report)


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("op", OPS, ids=op_id)
def test_float32_matches_float64(op, shape):
    rng = np.random.default_rng(2)
    x = np.asarray(3.0 * rng.standard_normal(shape))
    dy = np.asarray(rng.standard_normal(shape))
    y64, c64 = op.forward(x)
    y32, c32 = op.forward(x.astype(np.float32))
    dx32 = op.backward(dy.astype(np.float32), c32)
    assert y32.dtype == np.float32 and dx32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx32, op.backward(dy, c64), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", OPS, ids=op_id)
def test_upstream_none_means_zero(op):
    x = np.random.default_rng(3).standard_normal((2, 3))
    _, cache = op.forward(x)
    dx = op.backward(None, cache)
    assert dx.shape == x.shape and not dx.any()


BAD_INPUTS = {
    "x-nan": (np.array([0.0, np.nan]), "x: contains nan or inf"),
    "x-inf": (np.array([np.inf]), "x: contains nan or inf"),
    "x-int-dtype": (np.array([1, 2]), "x: expected a float32 or float64 array"),
    "x-none": (None, "x: expected a NumPy array"),
}


@pytest.mark.parametrize("x, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
@pytest.mark.parametrize("op", OPS, ids=op_id)
def test_bad_input_raises(op, x, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        op.forward(x)


BAD_UPSTREAM = {
    "dy-wrong-shape": (np.ones((3, 2)), "dy: expected shape (2, 3), got (3, 2)"),
    "dy-nan": (np.full((2, 3), np.nan), "dy: contains nan or inf"),
    "dy-float32": (np.ones((2, 3), np.float32), "dy: float32"),
}


@pytest.mark.parametrize("dy, message", BAD_UPSTREAM.values(), ids=BAD_UPSTREAM.keys())
@pytest.mark.parametrize("op", OPS, ids=op_id)
def test_bad_upstream_raises(op, dy, message):
    _, cache = op.forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=re.escape(message)):
        op.backward(dy, cache)
