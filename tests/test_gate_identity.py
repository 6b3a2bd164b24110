"""The gate identity equals the recurrent form's direct gate gradient; its near misses do not."""

import numpy as np
import pytest

from gla_np import parallel, recurrent
from gla_np.recurrence.gate_identity import gate_grad_from_identity, reverse_cumsum


def run_recurrent(seed, B, T, H, K, V, with_S0, with_dS_T):
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((2, B, H, T, K))
    v = rng.standard_normal((B, H, T, V))
    g = -rng.uniform(0.05, 2.0, (B, H, T, K))
    S0 = rng.standard_normal((B, H, K, V)) if with_S0 else None
    o, S_T, cache = recurrent.forward(q, k, v, g, initial_state=S0)
    do = rng.standard_normal(o.shape)
    dS_T = rng.standard_normal(S_T.shape) if with_dS_T else None
    dq, dk, dv, dg, dS0 = recurrent.backward(do, dS_T, cache)
    return q, k, dq, dk, dg, S_T, dS_T


def rel_err(got, want):
    return np.abs(got - want).max() / np.abs(want).max()


@pytest.mark.parametrize("with_dS_T", [True, False], ids=["dS_T", "no-dS_T"])
@pytest.mark.parametrize("with_S0", [True, False], ids=["S0", "no-S0"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (2, 7, 2, 3, 4)],
                         ids=["B1-T1-H1-K1-V1", "B2-T7-H2-K3-V4"])
def test_identity_equals_the_direct_formula(shape, with_S0, with_dS_T):
    q, k, dq, dk, dg, S_T, dS_T = run_recurrent(0, *shape, with_S0, with_dS_T)
    np.testing.assert_allclose(gate_grad_from_identity(q, dq, k, dk, S_T, dS_T), dg,
                               rtol=1e-12, atol=1e-12 * (1 + np.abs(dg).max()))


def test_near_misses_do_not_match():
    """Each classic slip changes the answer by order one, so a test would catch it."""
    q, k, dq, dk, dg, S_T, dS_T = run_recurrent(1, 2, 7, 2, 3, 4, True, True)
    x = q * dq - k * dk
    final_term = np.einsum("bhkv,bhkv->bhk", S_T, dS_T)[:, :, None, :]
    exclusive = reverse_cumsum(x, 2) - x + final_term
    dropped_final = reverse_cumsum(x, 2)
    flipped_sign = reverse_cumsum(-q * dq + k * dk, 2) + final_term
    assert rel_err(reverse_cumsum(x, 2) + final_term, dg) < 1e-12
    for wrong in (exclusive, dropped_final, flipped_sign):
        assert rel_err(wrong, dg) > 0.1


def test_reverse_cumsum_is_inclusive():
    x = np.arange(1.0, 5.0).reshape(1, 1, 4, 1)
    np.testing.assert_array_equal(reverse_cumsum(x, 2).ravel(), [10.0, 9.0, 7.0, 4.0])


def test_final_state_gradient_needs_the_final_state():
    z = np.zeros((1, 1, 2, 3))
    with pytest.raises(ValueError, match="^final_state:"):
        gate_grad_from_identity(z, z, z, z, None, np.zeros((1, 1, 3, 2)))


def test_identity_loses_precision_for_very_strong_gates_and_the_direct_formulas_do_not():
    """The documented caveat: with g = -30, q*dq and k*dk cancel to ~13 digits, so the identity
    keeps few correct digits, while the parallel form's window sums match the direct formula."""

    rng = np.random.default_rng(2)
    q, k = rng.standard_normal((2, 2, 2, 9, 3))
    v = rng.standard_normal((2, 2, 9, 4))
    g = np.full((2, 2, 9, 3), -30.0)
    do, dS_T = rng.standard_normal((2, 2, 9, 4)), rng.standard_normal((2, 2, 3, 4))
    o, S_T, cache = recurrent.forward(q, k, v, g)
    dq, dk, _, dg, _ = recurrent.backward(do, dS_T, cache)
    _, _, cache_p = parallel.forward(q, k, v, g)
    dg_parallel = parallel.backward(do, dS_T, cache_p)[3]
    assert rel_err(gate_grad_from_identity(q, dq, k, dk, S_T, dS_T), dg) > 1e-6
    assert rel_err(dg_parallel, dg) < 1e-10
