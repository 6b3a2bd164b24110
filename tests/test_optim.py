"""Optimizers, clipping and the schedule against values worked out by hand.

Each expected number below is written as explicit arithmetic on the update rule, never by
calling the code under test.
"""

import math

import numpy as np
import pytest

from gla_np import optim

P0 = [1.0, -2.0]
G1 = [0.5, 1.0]
G2 = [-1.0, 0.25]
G3 = [0.0, 0.0]
LR = 0.1


def _arr(values):
    return np.array(values, dtype=np.float64)


def _run(opt, grads_seq, params=None, lr=LR):
    params = params or {"p": _arr(P0)}
    state = opt.init(params)
    history = []
    for g in grads_seq:
        grads = {k: _arr(g).reshape(v.shape) for k, v in params.items()}
        params, state = opt.step(params, grads, state, lr)
        history.append(params)
    return history, state


def test_sgd_momentum_by_hand():
    history, state = _run(optim.SGD(momentum=0.9), [G1, G2, G3])
    # step 1: b = g1 = [0.5, 1.0];                   p = [1 - 0.1*0.5, -2 - 0.1*1.0]
    np.testing.assert_allclose(history[0]["p"], [0.95, -2.1], rtol=0, atol=1e-15)
    # step 2: b = 0.9*[0.5, 1.0] + [-1.0, 0.25] = [-0.55, 1.15];  p -= 0.1*b
    np.testing.assert_allclose(history[1]["p"], [0.95 + 0.055, -2.1 - 0.115], rtol=0, atol=1e-15)
    # step 3: g = 0, b = 0.9*[-0.55, 1.15] = [-0.495, 1.035];  p -= 0.1*b
    np.testing.assert_allclose(history[2]["p"], [1.005 + 0.0495, -2.215 - 0.1035],
                               rtol=0, atol=1e-15)
    np.testing.assert_allclose(state["b/p"], [-0.495, 1.035], rtol=0, atol=1e-15)
    assert int(state["step"]) == 3


def test_sgd_without_momentum_is_plain_gradient_descent():
    history, _ = _run(optim.SGD(momentum=0.0), [G1, G2])
    np.testing.assert_allclose(history[1]["p"], [1.0 - 0.05 + 0.1, -2.0 - 0.1 - 0.025],
                               rtol=0, atol=1e-15)


# Adam with beta1 = 0.5, beta2 = 0.75, so the moments are easy to follow by hand.
ADAM = dict(beta1=0.5, beta2=0.75, eps=1e-8)


def _adam_by_hand():
    """Two Adam steps on P0 with G1 then G2, lr 0.1, written out entry by entry."""
    # step 1: m = 0.5*g1 = [0.25, 0.5];  v = 0.25*g1^2 = [0.0625, 0.25]
    #         m^ = m/(1-0.5) = [0.5, 1.0];  v^ = v/(1-0.75) = [0.25, 1.0];  update = m^/(sqrt v^)
    p1 = [1.0 - 0.1 * 0.5 / (0.5 + 1e-8), -2.0 - 0.1 * 1.0 / (1.0 + 1e-8)]
    # step 2: m = 0.5*[0.25, 0.5] + 0.5*[-1.0, 0.25] = [-0.375, 0.375]
    #         v = 0.75*[0.0625, 0.25] + 0.25*[1.0, 0.0625] = [0.296875, 0.203125]
    #         corrections: 1 - 0.5^2 = 0.75, 1 - 0.75^2 = 0.4375
    m_hat = [-0.375 / 0.75, 0.375 / 0.75]
    v_hat = [0.296875 / 0.4375, 0.203125 / 0.4375]
    step2 = [0.1 * m_hat[i] / (math.sqrt(v_hat[i]) + 1e-8) for i in range(2)]
    return p1, step2


def test_adam_by_hand():
    history, state = _run(optim.Adam(**ADAM), [G1, G2])
    p1, step2 = _adam_by_hand()
    np.testing.assert_allclose(history[0]["p"], p1, rtol=1e-14)
    np.testing.assert_allclose(history[1]["p"], [p1[0] - step2[0], p1[1] - step2[1]], rtol=1e-14)
    np.testing.assert_allclose(state["m/p"], [-0.375, 0.375], rtol=1e-14)
    np.testing.assert_allclose(state["v/p"], [0.296875, 0.203125], rtol=1e-14)
    assert int(state["step"]) == 2


def test_adamw_decays_matrices_only_by_hand():
    params = {"w": _arr(P0).reshape(2, 1), "bias": _arr(P0)}
    opt = optim.AdamW(weight_decay=0.5, **ADAM)
    assert opt.decayed(params) == ["w"]
    history, _ = _run(opt, [G1, G2], params=params)
    p1, step2 = _adam_by_hand()
    # The vector is not decayed: it follows Adam exactly.
    np.testing.assert_allclose(history[1]["bias"], [p1[0] - step2[0], p1[1] - step2[1]],
                               rtol=1e-14)
    # The matrix: p' = p * (1 - 0.1*0.5) = 0.95 p first, then the same Adam step (m, v do not
    # see the decay). Step 1: [0.95, -1.9] - 0.1*[1, 1] (up to eps).
    w1 = [0.95 - 0.1 * 0.5 / (0.5 + 1e-8), -1.9 - 0.1 * 1.0 / (1.0 + 1e-8)]
    np.testing.assert_allclose(history[0]["w"][:, 0], w1, rtol=1e-14)
    w2 = [w1[0] * 0.95 - step2[0], w1[1] * 0.95 - step2[1]]
    np.testing.assert_allclose(history[1]["w"][:, 0], w2, rtol=1e-14)


def test_adamw_custom_decay_rule():
    params = {"w": _arr(P0).reshape(2, 1), "bias": _arr(P0)}
    opt = optim.AdamW(decay=lambda name, value: name == "bias")
    assert opt.decayed(params) == ["bias"]


@pytest.mark.parametrize("opt", [optim.SGD(), optim.Adam(), optim.AdamW(weight_decay=0.1)],
                         ids=["sgd", "adam", "adamw"])
def test_step_is_pure_and_keeps_float32(opt):
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((3, 2)).astype(np.float32),
              "b": rng.standard_normal(2).astype(np.float32),
              "s": np.asarray(0.3, dtype=np.float32)}  # 0-d: NumPy 1.x promotes it most easily
    grads = {k: np.asarray(rng.standard_normal(v.shape), np.float32) for k, v in params.items()}
    state = opt.init(params)
    copies = [{k: v.copy() for k, v in d.items()} for d in (params, grads, state)]
    new_params, new_state = opt.step(params, grads, state, 1e-2)
    for before, after in zip(copies, (params, grads, state)):
        assert before.keys() == after.keys()
        for k in before:
            np.testing.assert_array_equal(before[k], after[k])
    assert new_params is not params and new_state is not state
    assert all(v.dtype == np.float32 for v in new_params.values())
    assert all(v.dtype == np.float32 for k, v in new_state.items() if k != "step")
    assert not np.array_equal(new_params["w"], params["w"])


def test_state_save_restore_continues_identically(tmp_path):
    rng = np.random.default_rng(1)
    params = {"w": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    grads_seq = [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(5)]
    opt = optim.AdamW(weight_decay=0.1)

    straight, state = params, opt.init(params)
    for g in grads_seq:
        straight, state = opt.step(straight, g, state, 1e-2)

    p, s = params, opt.init(params)
    for g in grads_seq[:3]:
        p, s = opt.step(p, g, s, 1e-2)
    np.savez(tmp_path / "state.npz", **{"param/" + k: v for k, v in p.items()},
             **{"opt/" + k: v for k, v in s.items()})
    with np.load(tmp_path / "state.npz", allow_pickle=False) as f:
        p = {k[6:]: f[k] for k in f.files if k.startswith("param/")}
        s = {k[4:]: f[k] for k in f.files if k.startswith("opt/")}
    assert int(s["step"]) == 3
    for g in grads_seq[3:]:
        p, s = opt.step(p, g, s, 1e-2)
    for k in params:
        assert np.array_equal(p[k], straight[k])  # bit for bit


def test_step_rejects_mismatched_grads_and_state():
    params = {"w": np.zeros((2, 2))}
    opt = optim.Adam()
    state = opt.init(params)
    with pytest.raises(ValueError, match="grads"):
        opt.step(params, {"v": np.zeros((2, 2))}, state, 0.1)
    with pytest.raises(ValueError, match=r"grads\['w'\]"):
        opt.step(params, {"w": np.zeros((2, 3))}, state, 0.1)
    with pytest.raises(ValueError, match=r"state\['m/w'\]"):
        opt.step(params, {"w": np.zeros((2, 2))}, {"step": np.array(0)}, 0.1)
    with pytest.raises(ValueError, match="lr"):
        opt.step(params, {"w": np.zeros((2, 2))}, state, -1.0)
    with pytest.raises(ValueError, match="beta1"):
        optim.Adam(beta1=1.0)


def test_clip_by_global_norm():
    grads = {"a": _arr([3.0]), "b": _arr([[4.0]])}  # global norm sqrt(9 + 16) = 5
    clipped, norm = optim.clip_by_global_norm(grads, 1.0)
    assert norm == 5.0
    np.testing.assert_allclose(clipped["a"], [3.0 / 5.0], rtol=1e-15)
    np.testing.assert_allclose(clipped["b"], [[4.0 / 5.0]], rtol=1e-15)
    assert grads["a"][0] == 3.0 and grads["b"][0, 0] == 4.0  # inputs untouched

    kept, norm = optim.clip_by_global_norm(grads, 10.0)
    assert norm == 5.0 and kept is not grads
    np.testing.assert_array_equal(kept["a"], [3.0])

    with pytest.raises(ValueError, match=r"grads\['b'\]"):
        optim.clip_by_global_norm({"a": _arr([1.0]), "b": _arr([np.nan])}, 1.0)
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_by_global_norm(grads, 0.0)


def test_warmup_cosine_values():
    kw = dict(peak_lr=1.0, warmup_steps=4, total_steps=12, min_lr=0.1)
    assert optim.warmup_cosine(0, **kw) == 0.25  # 1.0 * (0 + 1) / 4
    assert optim.warmup_cosine(1, **kw) == 0.5
    assert optim.warmup_cosine(3, **kw) == 1.0  # last warmup step reaches the peak
    assert optim.warmup_cosine(4, **kw) == 1.0  # cosine starts at the peak
    # halfway through the decay: 0.1 + 0.9 * (1 + cos(pi/2)) / 2 = 0.55
    assert optim.warmup_cosine(8, **kw) == pytest.approx(0.55, abs=1e-15)
    assert optim.warmup_cosine(12, **kw) == pytest.approx(0.1, abs=1e-15)  # the floor
    assert optim.warmup_cosine(50, **kw) == pytest.approx(0.1, abs=1e-15)
    assert optim.warmup_cosine(0, peak_lr=1.0, warmup_steps=0, total_steps=4) == 1.0
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.warmup_cosine(0, peak_lr=1.0, warmup_steps=5, total_steps=4)
    with pytest.raises(ValueError, match="min_lr"):
        optim.warmup_cosine(0, peak_lr=1.0, warmup_steps=0, total_steps=4, min_lr=2.0)
