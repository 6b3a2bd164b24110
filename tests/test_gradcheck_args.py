"""The gradient checker's own arguments: each bad one is a ValueError naming it.

Before these checks, ``eps=0`` divided by zero and reported NaN errors, a negative tolerance
failed every correct backward, an infinite one passed every wrong backward, a NaN input was
reported as "wrote into its input" (NaN != NaN), and a bad ``seed`` raised NumPy's own error
naming no argument. ``build`` checks its ``seed`` the same way (last test).
"""

import math

import numpy as np
import pytest

from gla_np import GradcheckError, build, gradcheck


def _forward(x, W):
    return x @ W, (x, W)


def _backward(dy, cache):
    x, W = cache
    return dy @ W.T, x.T @ dy


def _inputs():
    rng = np.random.default_rng(4)
    return {"x": rng.standard_normal((3, 2)), "W": rng.standard_normal((2, 2))}


def _check(**kwargs):
    return gradcheck(_forward, _backward, kwargs.pop("inputs", None) or _inputs(), **kwargs)


def test_good_arguments_pass():
    assert _check(eps=1e-5, rtol=1e-6, atol=0.0, seed=7).ok


@pytest.mark.parametrize("name, value", [
    ("eps", 0.0), ("eps", -1e-6), ("eps", math.nan), ("eps", math.inf), ("eps", "small"),
    ("rtol", -1e-7), ("rtol", math.inf), ("rtol", math.nan),
    ("atol", -1.0), ("atol", math.inf), ("atol", math.nan), ("atol", "0"),
    ("seed", -1), ("seed", 1.5), ("seed", "0"), ("seed", None), ("seed", True),
    ("raise_error", "yes"),
], ids=lambda v: repr(v) if not isinstance(v, str) else v)
def test_bad_argument_is_named(name, value):
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        _check(**{name: value})


def test_an_infinite_tolerance_would_pass_a_wrong_backward():
    # why rtol/atol = inf are refused: a transposed dW then passes
    def wrong(dy, cache):
        x, W = cache
        return dy @ W.T, (x.T @ dy).T

    with pytest.raises(GradcheckError):
        gradcheck(_forward, wrong, _inputs())
    with pytest.raises(ValueError, match="^rtol"):
        gradcheck(_forward, wrong, _inputs(), rtol=math.inf)


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
def test_non_finite_input_reported_as_such(bad):
    inputs = _inputs()
    inputs["W"][1, 0] = bad
    with pytest.raises(ValueError, match=r"^inputs\['W'\]: contains nan or inf"):
        _check(inputs=inputs)


def test_non_finite_upstream_gradient_reported_as_such():
    douts = [np.full((3, 2), np.nan)]
    with pytest.raises(ValueError, match=r"^douts\[0\]: contains nan or inf"):
        _check(douts=douts)


def test_forward_and_backward_must_be_callable():
    with pytest.raises(ValueError, match="^forward: expected a function"):
        gradcheck(None, _backward, _inputs())
    with pytest.raises(ValueError, match="^backward: expected a function"):
        gradcheck(_forward, "backward", _inputs())


@pytest.mark.parametrize("seed", [-1, 2.5, "3", True], ids=["negative", "float", "str", "bool"])
def test_build_checks_seed_by_name(seed):
    with pytest.raises(ValueError, match="^seed: expected"):
        build(embed_dim=4, hidden_size=4, num_layers=1, num_heads=1, head_dim=2, seed=seed)
    assert build(embed_dim=4, hidden_size=4, num_layers=1, num_heads=1, head_dim=2,
                 seed=0).config.num_layers == 1


@pytest.mark.parametrize("inputs, match", [
    ({1: np.ones(2)}, r"inputs: expected argument names \(strings\) as keys, got 1"),
    ({"x": np.ones((0, 2))}, r"inputs\['x'\]: is empty \(shape \(0, 2\)\)"),
    ({"x": [[1.0, "a"]]}, r"inputs\['x'\]: expected a float64 array or a list of numbers"),
], ids=["int-name", "empty", "list-of-text"])
def test_input_names_and_empty_inputs_are_refused(inputs, match):
    """Regression: an int name raised TypeError from forward(**inputs), and an empty array
    passed, having checked nothing."""
    with pytest.raises(ValueError, match=match):
        gradcheck(lambda x: (x * 2, None), lambda dy, cache: 2 * dy, inputs)


def test_a_list_input_is_taken_as_a_float64_array():
    report = gradcheck(lambda x: (x * x, x), lambda dy, x: 2 * x * dy, {"x": [1.0, -2.0, 3]})
    assert report.ok and report.tensors[0].checked == 3
