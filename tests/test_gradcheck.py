"""Tests of the gradient checker itself: it passes correct backward passes, with errors far
below its tolerance, and it catches planted bugs, naming exactly the tensors that are wrong.

Each planted bug lives in a tiny hand-written forward/backward pair below, next to its correct
version, so the difference is one visible line.
"""

import numpy as np
import pytest

from gla_np import GradcheckError, gradcheck


def _first_line(error):
    return str(error.value).splitlines()[0]


# -- a linear map with bias: y = x @ W + b (three inputs) ------------------------------------

def affine_forward(x, W, b):
    return x @ W + b, (x, W)


def affine_backward(dy, cache):
    x, W = cache
    return dy @ W.T, x.T @ dy, dy.sum(axis=0)


def affine_backward_transposed_dW(dy, cache):
    x, W = cache
    return dy @ W.T, (x.T @ dy).T, dy.sum(axis=0)  # BUG: dW transposed (W square, so it fits)


def affine_inputs(seed=0, n=5, k=3, m=3, bias=True):
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((n, k)), "W": rng.standard_normal((k, m)),
              "b": rng.standard_normal(m)}
    if not bias:
        del inputs["b"]
    return inputs


# -- a residual linear map: y = x @ W + x (x is used twice) ----------------------------------

def residual_forward(x, W):
    return x @ W + x, (x, W)


def residual_backward(dy, cache):
    x, W = cache
    dx_matmul = dy @ W.T
    dx_skip = dy
    return dx_matmul + dx_skip, x.T @ dy  # x fed two paths


def residual_backward_missing_fanout(dy, cache):
    x, W = cache
    return dy @ W.T, x.T @ dy  # BUG: forgot the skip path's dy


# -- a scaled product: y = s * (x @ W) with s = 0.5 ------------------------------------------

SCALE = 0.5


def scaled_forward(x, W):
    return SCALE * (x @ W), (x, W)


def scaled_backward(dy, cache):
    x, W = cache
    return SCALE * dy @ W.T, SCALE * x.T @ dy


def scaled_backward_scale_twice(dy, cache):
    x, W = cache
    return SCALE * dy @ W.T, SCALE * SCALE * x.T @ dy  # BUG: scale applied twice to dW


# -- two outputs from one input pair: (x @ W, sin(x)) ----------------------------------------

def two_out_forward(x, W):
    return x @ W, np.sin(x), (x, W)


def two_out_backward(dy, dz, cache):
    x, W = cache
    dx = np.zeros_like(x) if dy is None else dy @ W.T
    dW = np.zeros_like(W) if dy is None else x.T @ dy
    if dz is not None:
        dx = dx + dz * np.cos(x)  # x fed both outputs
    return dx, dW


# -- passing correct backward passes ---------------------------------------------------------

@pytest.mark.parametrize("forward, backward, inputs", [
    (affine_forward, affine_backward, affine_inputs(m=4)),
    (residual_forward, residual_backward, affine_inputs(bias=False)),
    (scaled_forward, scaled_backward, affine_inputs(bias=False)),
], ids=["affine-3-inputs", "residual-fanout", "scaled"])
def test_correct_backward_passes_far_below_tolerance(forward, backward, inputs):
    report = gradcheck(forward, backward, inputs)
    assert report.ok and [t.name for t in report.tensors] == list(inputs)
    for t in report.tensors:
        assert t.checked == inputs[t.name].size
        assert t.rel_err < 1e-8, t  # rtol is 1e-7; bugs below show errors of order one


def test_several_outputs_pass():
    inputs = affine_inputs(bias=False)
    report = gradcheck(two_out_forward, two_out_backward, inputs)
    assert report.ok and max(t.rel_err for t in report.tensors) < 1e-8


@pytest.mark.parametrize("which", [0, 1], ids=["no-grad-on-y", "no-grad-on-z"])
def test_none_upstream_is_passed_as_none(which):
    inputs = affine_inputs(bias=False)
    seen = []

    def spy_backward(dy, dz, cache):
        seen.append((dy is None, dz is None))
        return two_out_backward(dy, dz, cache)

    douts = [np.random.default_rng(1).standard_normal((5, 3)), np.ones((5, 3))]
    douts[which] = None
    report = gradcheck(two_out_forward, spy_backward, inputs, douts=douts)
    assert report.ok and seen == [(which == 0, which == 1)]


def test_none_upstream_must_count_as_zero():
    """A backward that uses a made-up gradient for an output marked None is wrong."""
    inputs = affine_inputs(bias=False)

    def backward_ignoring_none(dy, dz, cache):
        return two_out_backward(dy, np.ones_like(cache[0]), cache)

    with pytest.raises(GradcheckError) as err:
        gradcheck(two_out_forward, backward_ignoring_none, inputs,
                  douts=[np.ones((5, 3)) * 0.3, None])
    assert _first_line(err) == "gradient check failed for 'x'"


def test_sampled_mode_passes_and_checks_only_the_sample():
    inputs = affine_inputs(n=6, k=4, m=4)
    report = gradcheck(affine_forward, affine_backward, inputs, sample=5)
    assert report.ok
    assert [t.checked for t in report.tensors] == [5, 5, 4]  # b has only 4 entries


def test_gradients_as_dict_and_lone_none():
    inputs = affine_inputs()
    report = gradcheck(affine_forward,
                       lambda dy, c: dict(zip("xWb", affine_backward(dy, c))), inputs)
    assert report.ok
    # A one-input function whose output ignores x: a lone None gradient means zero and passes.
    x = np.ones(3)
    assert gradcheck(lambda x: (np.zeros(2), None), lambda dy, c: None, {"x": x}).ok
    with pytest.raises(GradcheckError):  # ...but not when the output does depend on x
        gradcheck(lambda x: (2 * x, None), lambda dy, c: None, {"x": x})


# -- catching planted bugs -------------------------------------------------------------------

@pytest.mark.parametrize("forward, backward, inputs, wrong", [
    (affine_forward, affine_backward_transposed_dW, affine_inputs(), "'W'"),
    (residual_forward, residual_backward_missing_fanout, affine_inputs(bias=False), "'x'"),
    (scaled_forward, scaled_backward_scale_twice, affine_inputs(bias=False), "'W'"),
], ids=["transposed-dW", "missing-fanout", "scale-twice"])
def test_planted_bug_is_caught_and_named(forward, backward, inputs, wrong):
    with pytest.raises(GradcheckError) as err:
        gradcheck(forward, backward, inputs)
    assert _first_line(err) == f"gradient check failed for {wrong}"  # only the wrong tensor
    report = gradcheck(forward, backward, inputs, raise_error=False)
    failed = [t for t in report.tensors if not t.ok]
    assert [f"'{t.name}'" for t in failed] == [wrong]
    assert failed[0].rel_err > 0.1  # a bug shows an error of order one, not a rounding error
    assert all(t.rel_err < 1e-8 for t in report.tensors if t.ok)


def test_two_planted_bugs_both_named():
    def backward(dy, cache):
        dx, dW, db = affine_backward_transposed_dW(dy, cache)
        return dx, dW, 2 * db  # BUG: bias gradient off by a factor 2

    with pytest.raises(GradcheckError) as err:
        gradcheck(affine_forward, backward, affine_inputs())
    assert _first_line(err) == "gradient check failed for 'W', 'b'"


def test_upstream_gradients_do_not_repeat_the_callers_random_numbers():
    """Regression: the checker once drew dy from default_rng(seed) itself, so with x drawn from
    default_rng(0) and the default seed=0, dy equalled x, x.T @ dy was symmetric and a
    transposed dW passed. Its upstream gradients now come from a stream of their own."""
    x = np.random.default_rng(0).standard_normal((5, 3))
    W = np.random.default_rng(1).standard_normal((3, 3))
    with pytest.raises(GradcheckError) as err:
        gradcheck(lambda x, W: (x @ W, (x, W)),
                  lambda dy, c: (dy @ c[1].T, (c[0].T @ dy).T), {"x": x, "W": W}, seed=0)
    assert _first_line(err) == "gradient check failed for 'W'"


def test_sampled_mode_catches_a_bug():
    # W is 3x3; a transposed dW is right only on the diagonal (3 entries), so a sample of 4
    # entries must include an off-diagonal one, whichever entries are drawn.
    report = gradcheck(affine_forward, affine_backward_transposed_dW, affine_inputs(),
                       sample=4, raise_error=False)
    assert [t.name for t in report.failures()] == ["W"]
    assert report.tensors[1].checked == 4


def test_ones_upstream_hides_a_reduction_bug_random_upstream_catches_it():
    """Centring rows: the right backward subtracts the row mean of dy. Subtracting the column
    mean instead is wrong, but with dy = ones both give zero, so only a random dy exposes it."""
    def forward(x):
        return x - x.mean(axis=1, keepdims=True), None

    def backward_wrong_axis(dy, cache):
        return dy - dy.mean(axis=0, keepdims=True)  # BUG: mean over the wrong axis

    x = np.random.default_rng(2).standard_normal((4, 3))
    assert gradcheck(forward, backward_wrong_axis, {"x": x}, douts=[np.ones((4, 3))]).ok
    with pytest.raises(GradcheckError):
        gradcheck(forward, backward_wrong_axis, {"x": x})


def test_backward_writing_into_upstream_is_caught():
    def backward(dy, cache):
        x, W = cache
        dy *= SCALE  # BUG: in-place edit of the caller's upstream gradient
        return dy @ W.T, x.T @ dy

    with pytest.raises(GradcheckError, match="upstream gradient of output 0"):
        gradcheck(scaled_forward, backward, affine_inputs(bias=False))


def test_writing_into_an_input_is_caught():
    def forward(x, W):
        W += 1e-3  # BUG: edits the caller's W in place
        return x @ W, (x, W)

    with pytest.raises(GradcheckError, match="input 'W'"):
        gradcheck(forward, lambda dy, c: (dy @ c[1].T, c[0].T @ dy), affine_inputs(bias=False))


def test_wrong_shape_gradient_is_reported():
    inputs = affine_inputs(k=3, m=2)

    def backward(dy, cache):
        dx, dW, db = affine_backward(dy, cache)
        return dx, dW.T, db  # BUG: (2, 3) gradient for a (3, 2) weight

    report = gradcheck(affine_forward, backward, inputs, raise_error=False)
    bad = report.failures()
    assert [t.name for t in bad] == ["W"] and bad[0].checked == 0
    assert bad[0].max_abs_err == np.inf
    assert "shape (2, 3), expected (3, 2)" in bad[0].note
    with pytest.raises(GradcheckError, match=r"'W'(.|\n)*returned shape \(2, 3\)"):
        gradcheck(affine_forward, backward, inputs)


def test_wrong_number_of_gradients_is_reported():
    with pytest.raises(GradcheckError, match="2 gradients for 3 inputs"):
        gradcheck(affine_forward, lambda dy, c: affine_backward(dy, c)[:2], affine_inputs())


# -- refusing bad use ------------------------------------------------------------------------

def test_float32_inputs_refused():
    inputs = affine_inputs()
    inputs["W"] = inputs["W"].astype(np.float32)
    with pytest.raises(ValueError, match=r"inputs\['W'\].*float64"):
        gradcheck(affine_forward, affine_backward, inputs)


@pytest.mark.parametrize("sample", [0, -3, 2.5], ids=["zero", "negative", "float"])
def test_bad_sample_refused(sample):
    # sample=0 used to check nothing and pass: a silent false "ok".
    with pytest.raises(ValueError, match="sample"):
        gradcheck(affine_forward, affine_backward, affine_inputs(), sample=sample)


def test_douts_of_wrong_length_or_shape_refused():
    with pytest.raises(ValueError, match="douts"):
        gradcheck(affine_forward, affine_backward, affine_inputs(), douts=[None, None])
    with pytest.raises(ValueError, match=r"douts\[0\]"):
        gradcheck(affine_forward, affine_backward, affine_inputs(), douts=[np.ones((3, 5))])
