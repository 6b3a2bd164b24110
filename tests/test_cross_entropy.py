"""Tests for gla_np.cross_entropy: gradient, ignored positions, stability, bad input."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gla_np import cross_entropy, gradcheck


def _reference_loss(logits, targets, ignore_index=-100):
    """The textbook formula in float64, one position at a time (fine for small logits)."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1, logits.shape[-1])
    total, n = 0.0, 0
    for row, t in zip(z, targets.reshape(-1)):
        if t != ignore_index:
            total += -np.log(np.exp(row[t]) / np.exp(row).sum())
            n += 1
    return total / n if n else 0.0


def _problem(shape, vocab, seed, ignore_fraction=0.3):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(shape + (vocab,)) * 2
    targets = rng.integers(0, vocab, size=shape)
    targets[rng.random(shape) < ignore_fraction] = -100
    return logits, targets


@pytest.mark.parametrize("shape, vocab", [((), 5), ((4,), 3), ((2, 3), 7), ((2, 2, 2), 4)],
                         ids=["single-V5", "N4-V3", "B2-T3-V7", "B2-T2-H2-V4"])
def test_gradcheck(shape, vocab):
    logits, targets = _problem(shape, vocab, seed=0)
    if shape:
        targets.reshape(-1)[0] = 1  # at least one position counts
    report = gradcheck(lambda logits: cross_entropy.forward(logits, targets),
                       cross_entropy.backward, {"logits": logits})
    assert report.tensors[0].rel_err <= 1e-7


@given(batch=st.integers(1, 3), time=st.integers(1, 4), vocab=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_gradcheck_random_shapes(batch, time, vocab, seed):
    logits, targets = _problem((batch, time), vocab, seed, ignore_fraction=0.4)
    report = gradcheck(lambda logits: cross_entropy.forward(logits, targets),
                       cross_entropy.backward, {"logits": logits})
    assert report.tensors[0].rel_err <= 1e-7


def test_value_matches_textbook_formula_and_count():
    logits, targets = _problem((3, 5), 6, seed=1)
    targets[0, :2] = -100
    targets[1, 0] = 4
    loss, cache = cross_entropy.forward(logits, targets)
    assert loss.shape == () and loss.dtype == np.float64
    assert cache.count == int((targets != -100).sum())
    np.testing.assert_allclose(loss, _reference_loss(logits, targets), rtol=1e-13)


def test_ignored_positions_get_exactly_zero_gradient():
    logits, targets = _problem((4, 5), 6, seed=2)
    targets[[0, 2], [1, 3]] = -100
    targets[1, 1] = 0
    _, cache = cross_entropy.forward(logits, targets)
    dlogits = cross_entropy.backward(np.float64(0.7), cache)
    ignored = targets == -100
    assert np.all(dlogits[ignored] == 0.0)
    assert np.all(np.abs(dlogits[~ignored]).sum(axis=-1) > 0)
    np.testing.assert_allclose(dlogits.sum(axis=-1), 0.0, atol=1e-15)  # softmax - onehot sums to 0


def test_custom_ignore_index():
    logits, targets = _problem((2, 4), 5, seed=3, ignore_fraction=0.0)
    targets[0, 0] = 0
    loss, cache = cross_entropy.forward(logits, targets, ignore_index=0)
    assert cache.count == int((targets != 0).sum())
    np.testing.assert_allclose(loss, _reference_loss(logits, targets, ignore_index=0), rtol=1e-13)
    assert not cross_entropy.backward(1.0, cache)[targets == 0].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_all_ignored_gives_zero_loss_and_gradient(dtype):
    logits = np.random.default_rng(4).standard_normal((2, 3, 5)).astype(dtype)
    targets = np.full((2, 3), -100)
    loss, cache = cross_entropy.forward(logits, targets)
    assert loss == 0 and loss.dtype == dtype and cache.count == 0
    dlogits = cross_entropy.backward(1.0, cache)
    assert dlogits.dtype == dtype and dlogits.shape == logits.shape and not dlogits.any()


def test_dloss_scales_gradient_and_none_means_zero():
    logits, targets = _problem((3, 4), 5, seed=5)
    targets[0, 0] = 2
    _, cache = cross_entropy.forward(logits, targets)
    g1 = cross_entropy.backward(1.0, cache)
    assert np.abs(g1).sum() > 0
    zero = cross_entropy.backward(None, cache)
    assert zero.shape == g1.shape and zero.dtype == g1.dtype and not zero.any()
    np.testing.assert_allclose(cross_entropy.backward(np.array(-2.5), cache), -2.5 * g1,
                               rtol=1e-15)


@pytest.mark.parametrize("shape", [(), (4,), (2, 3)], ids=["one-position", "4", "2x3"])
def test_float32_keeps_dtype(shape):
    # One position gives 0-d intermediates, which NumPy 1.x would promote with a Python float.
    rng = np.random.default_rng(7)
    logits = rng.standard_normal(shape + (5,)).astype(np.float32)
    loss, cache = cross_entropy.forward(logits, rng.integers(0, 5, size=shape))
    dlogits = cross_entropy.backward(0.5, cache)
    assert loss.dtype == np.float32 and dlogits.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_stable_for_huge_logits(dtype):
    rng = np.random.default_rng(6)
    logits64 = np.where(rng.random((3, 4, 6)) < 0.5, 1e4, -1e4) + rng.standard_normal((3, 4, 6))
    logits = logits64.astype(dtype)
    targets = rng.integers(0, 6, size=(3, 4))
    targets[0, 0] = -100
    loss, cache = cross_entropy.forward(logits, targets)
    dlogits = cross_entropy.backward(1.0, cache)
    assert loss.dtype == dtype and dlogits.dtype == dtype
    assert np.isfinite(loss) and np.isfinite(dlogits).all()

    # Reference in float64 from the same (rounded) logits, via np.logaddexp.reduce.
    z = logits.astype(np.float64)
    lse = np.logaddexp.reduce(z, axis=-1)  # (3, 4)
    counted = targets != -100
    nll = lse - np.take_along_axis(z, np.where(counted, targets, 0)[..., None], -1)[..., 0]
    expected_loss = nll[counted].mean()
    expected_grad = (np.exp(z - lse[..., None]) - np.eye(6)[np.where(counted, targets, 0)])
    expected_grad *= counted[..., None] / counted.sum()
    assert expected_loss > 100  # the test really exercises large logit gaps
    # The reference's own rounding: z - lse for |z| ~ 1e4 loses about 1e4 * eps64 ~ 2e-12.
    rtol, atol = (1e-6, 1e-6) if dtype == np.float32 else (1e-13, 1e-11)
    np.testing.assert_allclose(loss, expected_loss, rtol=rtol)
    np.testing.assert_allclose(dlogits, expected_grad, rtol=0, atol=atol)


def test_bad_inputs_name_the_argument():
    logits = np.zeros((2, 3))
    targets = np.array([0, 1])
    cases = [
        ("logits", dict(logits=np.array([[0.0, np.nan, 1.0]] * 2))),
        ("logits", dict(logits=np.array(1.0), targets=np.array(0))),
        ("logits", dict(logits=np.zeros((2, 0)))),
        ("logits", dict(logits=np.zeros((2, 3), dtype=np.int64))),
        ("targets", dict(targets=np.array([0.0, 1.0]))),
        ("targets", dict(targets=np.array([0, 1, 2]))),
        ("targets", dict(targets=np.array([0, 3]))),
        ("targets", dict(targets=np.array([-1, 0]))),
        ("ignore_index", dict(ignore_index=1.5)),
    ]
    for name, override in cases:
        kwargs = dict(logits=logits, targets=targets) | override
        with pytest.raises(ValueError, match=name):
            cross_entropy.forward(**kwargs)
    _, cache = cross_entropy.forward(logits, targets)
    for bad in (np.ones(2), np.nan, "1"):
        with pytest.raises(ValueError, match="dloss"):
            cross_entropy.backward(bad, cache)


# Gaps that push exp(shifted), the division by the row sum, or backward's product into the
# subnormal range or to 0: the correctly rounded answer, so even all="raise" must stay quiet.
UNDERFLOW_GAPS = {"f32-subnormal": (np.float32, 90.0), "f32-zero": (np.float32, 1e4),
                  "f64-subnormal": (np.float64, 740.0), "f64-zero": (np.float64, 1e4)}


@pytest.mark.parametrize("dtype, gap", UNDERFLOW_GAPS.values(), ids=UNDERFLOW_GAPS.keys())
def test_underflow_does_not_raise_under_errstate_raise(dtype, gap):
    logits = np.array([[0.0, -gap, 0.5], [1.0, -gap, -gap]], dtype=dtype)
    targets = np.array([0, 1])
    with np.errstate(all="raise"):
        loss, cache = cross_entropy.forward(logits, targets)
        dlogits = cross_entropy.backward(np.array(0.3), cache)
    # row 0: the far logit's probability is 0 to rounding; row 1: target -gap, nll = gap + ...
    lse0 = np.logaddexp(0.0, 0.5)
    lse1 = 1.0 + np.log1p(2 * np.exp(-gap - 1.0))
    expected = ((lse0 - 0.0) + (lse1 + gap)) / 2
    assert loss.dtype == dtype and dlogits.dtype == dtype
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert np.isfinite(dlogits).all()
    np.testing.assert_allclose(dlogits.sum(axis=-1), 0.0, atol=1e-6)  # softmax - onehot rows
    assert 0 <= dlogits[0, 1] < 1e-30  # the underflowed probability, times 0.3 / 2
