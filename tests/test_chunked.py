"""The chunked form: the paper's chunkwise algorithm, its backward, and why it tiles."""

import numpy as np
import pytest

from gla_np import chunked, gate_identity, recurrent
from gla_np.gradcheck import gradcheck
from gla_np.recurrence import _chunk_tiles

# (B, H, T, K, V, chunk_size, sub_chunk_size)
CASES = [
    (1, 2, 8, 3, 2, 4, 2),  # C divides T; the chunk halved once into tiles of 2
    (2, 1, 7, 3, 4, 3, 2),  # C does not divide T; the chunk padded from 3 to 4 rows to halve it
    (1, 1, 13, 2, 3, 6, 4),  # ragged last chunk; halved once into tiles of 3
    (1, 2, 9, 2, 2, 9, 3),  # one chunk = the whole sequence, padded from 9 to 12 (tiles of 3)
    (1, 1, 16, 2, 3, 16, 2),  # three levels of halving down to tiles of 2
    (1, 1, 5, 2, 2, 1, 1),  # chunk 1: the recurrence itself
    (2, 1, 4, 3, 2, 16, 16),  # chunk longer than T
]


def case_id(case):
    return "B{}-H{}-T{}-K{}-V{}-C{}-c{}".format(*case)


def make_inputs(rng, B, H, T, K, V, *, dtype=np.float64, gate=2.0, initial_state=True):
    q = rng.standard_normal((B, H, T, K)).astype(dtype)
    k = rng.standard_normal((B, H, T, K)).astype(dtype)
    v = rng.standard_normal((B, H, T, V)).astype(dtype)
    g = -rng.uniform(0.05, gate, (B, H, T, K)).astype(dtype)  # strictly < 0: room for +-eps
    S0 = rng.standard_normal((B, H, K, V)).astype(dtype) if initial_state else None
    return q, k, v, g, S0


@pytest.fixture(params=["as chosen", "halving only"])
def path(request, monkeypatch):
    """Run a test twice: with mild blocks as one masked matmul where the span allows it (the
    default), and with the halving alone (no span is small enough)."""
    if request.param == "halving only":
        monkeypatch.setattr(_chunk_tiles, "_span_limit", lambda *args: -np.inf)
    return request.param


def rel_err(x, ref):
    """max |x - ref| relative to the largest magnitude in ref."""
    return float(np.abs(x - ref).max() / max(np.abs(ref).max(), np.finfo(ref.dtype).tiny))


@pytest.mark.parametrize("with_dS_T", [True, False], ids=["dS_T", "no-dS_T"])
@pytest.mark.parametrize("with_S0", [True, False], ids=["S0", "no-S0"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradients_match_finite_differences(case, with_S0, with_dS_T, path):
    B, H, T, K, V, C, c = case
    rng = np.random.default_rng(3)
    q, k, v, g, S0 = make_inputs(rng, B, H, T, K, V, initial_state=with_S0)
    inputs = dict(q=q, k=k, v=v, g=g)
    if with_S0:
        inputs["initial_state"] = S0
    douts = [rng.standard_normal((B, H, T, V)),
             rng.standard_normal((B, H, K, V)) if with_dS_T else None]
    gradcheck(lambda **a: chunked.forward(**a, chunk_size=C, sub_chunk_size=c),
              chunked.backward, inputs, douts=douts)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_recurrent_in_float64(case, path):
    B, H, T, K, V, C, c = case
    rng = np.random.default_rng(4)
    q, k, v, g, S0 = make_inputs(rng, B, H, T, K, V, gate=30.0)
    do, dS_T = rng.standard_normal((B, H, T, V)), rng.standard_normal((B, H, K, V))
    *ref, ref_cache = recurrent.forward(q, k, v, g, initial_state=S0, scale=0.3)
    *got, cache = chunked.forward(q, k, v, g, initial_state=S0, scale=0.3, chunk_size=C,
                                  sub_chunk_size=c)
    ref += recurrent.backward(do, dS_T, ref_cache)
    got += chunked.backward(do, dS_T, cache)
    for name, x, r in zip(["o", "S_T", "dq", "dk", "dv", "dg", "dS0"], got, ref):
        assert rel_err(x, r) < 1e-12, name


@pytest.mark.parametrize("g_value", [-30.0, "uniform(-30, 0)"], ids=["g-30", "g-uniform30"])
def test_float32_strong_gates_chunk_64_stay_finite_and_agree(g_value):
    rng = np.random.default_rng(5)
    B, H, T, K, V = 1, 2, 150, 8, 8  # three chunks of 64, the last one ragged
    q, k, v, _, S0 = make_inputs(rng, B, H, T, K, V, dtype=np.float32)
    if g_value == -30.0:
        g = np.full((B, H, T, K), -30.0, dtype=np.float32)
    else:
        g = -rng.uniform(0, 30, (B, H, T, K)).astype(np.float32)
    do = rng.standard_normal((B, H, T, V)).astype(np.float32)
    dS_T = rng.standard_normal((B, H, K, V)).astype(np.float32)
    *got, cache = chunked.forward(q, k, v, g, initial_state=S0, chunk_size=64)
    *ref, ref_cache = recurrent.forward(q, k, v, g, initial_state=S0)
    got += chunked.backward(do, dS_T, cache)
    ref += recurrent.backward(do, dS_T, ref_cache)
    for name, x, r in zip(["o", "S_T", "dq", "dk", "dv", "dg", "dS0"], got, ref):
        assert x.dtype == np.float32, name
        assert np.isfinite(x).all(), name
        assert rel_err(x, r) < 1e-4, name


def test_naive_factoring_overflows_in_float32_but_the_tiles_do_not():
    # The tempting factoring exp(b_t - b_u) = exp(b_t) * exp(-b_u) over one chunk of 64:
    # -b_u grows to 64 * 30 = 1920, far past log(float32 max) = 88.7.
    rng = np.random.default_rng(6)
    C, K = 64, 4
    q, k = rng.standard_normal((2, C, K)).astype(np.float32)
    g = np.full((C, K), -30.0, dtype=np.float32)
    b = np.cumsum(g, axis=0)  # chunk-local cumulative log gate, down to -1920
    with np.errstate(over="ignore", invalid="ignore"):
        scores = (q * np.exp(b)) @ (k * np.exp(-b)).T  # exp(-b) = inf; 0 * inf = nan
    assert not np.isfinite(scores).all()
    assert np.isnan(scores).any()
    # the tiled chunk form on the same chunk: finite, and equal to the definition
    q4, k4, g4 = q[None, None], k[None, None], g[None, None]  # (1, 1, C, K)
    v = rng.standard_normal((1, 1, C, 3)).astype(np.float32)
    o, _, _ = chunked.forward(q4, k4, v, g4, chunk_size=64)
    o_ref, _, _ = recurrent.forward(q4, k4, v, g4)
    assert np.isfinite(o).all() and rel_err(o, o_ref) < 1e-5


def _sizes_of_one_matmul(monkeypatch):
    """A list that records the block size of every one-matmul call of _chunk_tiles."""
    sizes, in_blocks = [], _chunk_tiles._in_blocks

    def spy(qs, k, b, size, *args):
        sizes.append(size)
        return in_blocks(qs, k, b, size, *args)

    monkeypatch.setattr(_chunk_tiles, "_in_blocks", spy)
    return sizes


@pytest.mark.parametrize("g_per_step, calls", [(-np.log(2) / 16, [64]), (-1.0, [16, 16]),
                                               (-30.0, [])], ids=["init", "g-1", "g-30"])
def test_one_matmul_at_the_first_level_whose_blocks_are_mild(monkeypatch, g_per_step, calls):
    # float32 allows spans up to ln(max) / 4 = 22.2. A chunk of 64 at the initial gates spans
    # 63 ln2 / 16 = 2.7: one matmul, made once (the cache keeps it for the backward). At g = -1
    # the chunk spans 63, its halves 31, their halves 15: two halvings, then one matmul per
    # block of 16, made in the forward and again in the backward. At g = -30 no block is mild.
    sizes = _sizes_of_one_matmul(monkeypatch)
    rng = np.random.default_rng(11)
    B, H, T, K, V = 1, 2, 150, 8, 8  # three chunks of 64, the last one ragged
    q, k, v, _, S0 = make_inputs(rng, B, H, T, K, V, dtype=np.float32)
    g = np.full((B, H, T, K), g_per_step, dtype=np.float32)
    do = rng.standard_normal((B, H, T, V)).astype(np.float32)
    dS_T = rng.standard_normal((B, H, K, V)).astype(np.float32)
    *got, cache = chunked.forward(q, k, v, g, initial_state=S0, chunk_size=64)
    got += chunked.backward(do, dS_T, cache)
    f64 = [x.astype(np.float64) for x in (q, k, v, g, S0, do, dS_T)]
    *ref, ref_cache = recurrent.forward(*f64[:4], initial_state=f64[4])
    ref += recurrent.backward(f64[5], f64[6], ref_cache)
    for name, x, r in zip(["o", "S_T", "dq", "dk", "dv", "dg", "dS0"], got, ref):
        assert x.dtype == np.float32 and rel_err(x, r) < 1e-5, name
    assert sizes == calls
    assert (cache.mild is not None) == (calls == [64])


def test_one_matmul_is_refused_when_the_magnitudes_leave_no_room(monkeypatch):
    # mild gates, but keys of 1e15: n^2 m^3 exp(span) would pass float32's range, so the chunk
    # is halved, every exponent <= 0, and the result is finite.
    sizes = _sizes_of_one_matmul(monkeypatch)
    rng = np.random.default_rng(12)
    q, k, v, _, _ = make_inputs(rng, 1, 1, 64, 4, 4, dtype=np.float32)
    k *= np.float32(1e15)
    g = np.full(q.shape, -0.01, dtype=np.float32)
    o, _, cache = chunked.forward(q * np.float32(1e-15), k, v, g)
    dq, dk, dv, dg, _ = chunked.backward(v, None, cache)
    assert sizes == []
    assert all(np.isfinite(x).all() for x in (o, dq, dk, dv, dg))


def test_masked_pairs_of_one_matmul_are_exactly_zero():
    # a mild block: the pairs u >= t of the matmul are formed (finite, bounded by (M2)) and
    # multiplied by 0; the past pairs equal exp(b_t - b_u) summed directly
    rng = np.random.default_rng(13)
    qs, k = rng.standard_normal((2, 1, 16, 3))
    b = np.cumsum(-rng.uniform(0, 1, (1, 16, 3)), axis=-2)
    A = _chunk_tiles._in_blocks(qs, k, b, 16)[0].reshape(16, 16)
    direct = np.einsum("tk,uk,tuk->tu", qs[0], k[0], np.exp(b[0][:, None] - b[0][None, :]))
    assert np.all(A[np.triu_indices(16)] == 0)
    assert np.allclose(np.tril(direct, -1), A, rtol=1e-13, atol=0)


def test_span_limit_is_a_quarter_of_the_log_range_or_less_for_large_values():
    assert _chunk_tiles._span_limit(np.float32, 64, np.ones(3)) == pytest.approx(
        np.log(np.finfo(np.float32).max) / 4)
    # n^2 m^3 exp(limit) <= max / 2
    x = np.array([-1e9, 2.0])
    limit = _chunk_tiles._span_limit(np.float32, 64, x)
    assert 64.0 ** 2 * 1e27 * np.exp(limit) == pytest.approx(float(np.finfo(np.float32).max) / 2)
    assert _chunk_tiles._span_limit(np.float64, 64, np.array([np.inf])) == -np.inf


def test_naive_factoring_threshold_is_log_of_float32_max():
    # over C = 64 steps the naive factor exp(-b) overflows once 64 * |g| > log(max) = 88.72
    with np.errstate(over="ignore"):
        assert np.isfinite(np.exp(np.float32(64 * 1.38)))
        assert np.isinf(np.exp(np.float32(64 * 1.39)))


def test_sub_chunk_and_chunk_sizes_do_not_change_the_result():
    rng = np.random.default_rng(7)
    q, k, v, g, S0 = make_inputs(rng, 1, 2, 23, 3, 2, gate=5.0)
    o_ref, S_ref, _ = chunked.forward(q, k, v, g, initial_state=S0, chunk_size=23,
                                      sub_chunk_size=23)
    for C, c in [(1, 1), (5, 1), (5, 2), (8, 3), (8, 8), (64, 5), (64, None), (7, 100)]:
        o, S_T, _ = chunked.forward(q, k, v, g, initial_state=S0, chunk_size=C,
                                    sub_chunk_size=c)
        assert rel_err(o, o_ref) < 1e-13 and rel_err(S_T, S_ref) < 1e-13, (C, c)


def test_cache_keeps_only_chunk_boundary_states():
    rng = np.random.default_rng(8)
    q, k, v, g, S0 = make_inputs(rng, 2, 1, 10, 3, 2)
    o, S_T, cache = chunked.forward(q, k, v, g, initial_state=S0, chunk_size=4,
                                    sub_chunk_size=3)
    assert cache.states.shape == (2, 1, 4, 3, 2)  # H_0, H_1, H_2 and H_3 = S_T: N + 1 = 4
    np.testing.assert_array_equal(cache.states[:, :, 0], S0)
    np.testing.assert_array_equal(cache.states[:, :, -1], S_T)
    assert (cache.chunk_size, cache.sub_chunk_size) == (4, 3)
    small = chunked.forward(q, k, v, g, chunk_size=100, sub_chunk_size=50)[2]
    assert (small.chunk_size, small.sub_chunk_size) == (10, 10)  # clamped to T, then to C


def test_float32_in_float32_out_and_none_upstream_means_zero():
    rng = np.random.default_rng(9)
    q, k, v, g, _ = make_inputs(rng, 1, 1, 9, 2, 3, dtype=np.float32)
    o, S_T, cache = chunked.forward(q, k, v, g, chunk_size=4, sub_chunk_size=3)
    assert o.dtype == S_T.dtype == np.float32
    grads = chunked.backward(None, None, cache)
    assert grads[4] is None  # no initial state, no initial-state gradient
    for x in grads[:4]:
        assert x.dtype == np.float32 and not x.any()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4", None], ids=repr)
def test_bad_chunk_size_is_refused(bad):
    q, k, v, g, _ = make_inputs(np.random.default_rng(10), 1, 1, 4, 2, 2)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked.forward(q, k, v, g, chunk_size=bad)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4"], ids=repr)
def test_bad_sub_chunk_size_is_refused(bad):
    q, k, v, g, _ = make_inputs(np.random.default_rng(11), 1, 1, 4, 2, 2)
    with pytest.raises(ValueError, match="sub_chunk_size"):
        chunked.forward(q, k, v, g, sub_chunk_size=bad)


def test_bad_arrays_are_refused_by_the_shared_checks():
    q, k, v, g, _ = make_inputs(np.random.default_rng(12), 1, 1, 4, 2, 2)
    with pytest.raises(ValueError, match="g"):
        chunked.forward(q, k, v, -g)  # positive log gates
    with pytest.raises(ValueError, match="k"):
        chunked.forward(q, k[:, :, :3], v, g)


def test_dg_is_the_gate_identity_in_float64():
    # the code drops terms that hold no gate; in exact arithmetic that changes nothing
    rng = np.random.default_rng(13)
    q, k, v, g, S0 = make_inputs(rng, 2, 1, 11, 3, 2)
    do, dS_T = rng.standard_normal((2, 1, 11, 2)), rng.standard_normal((2, 1, 3, 2))
    o, S_T, cache = chunked.forward(q, k, v, g, initial_state=S0, chunk_size=4,
                                    sub_chunk_size=3)
    dq, dk, dv, dg, dS0 = chunked.backward(do, dS_T, cache)
    plain = gate_identity.gate_grad_from_identity(q, dq, k, dk, S_T, dS_T)
    assert rel_err(dg, plain) < 1e-12


def test_plain_gate_identity_is_only_noise_in_float32_at_strong_gates():
    # At g = -30 the true dg is ~exp(-30) ~ 1e-13, while q dq and k dk are O(1) and cancel:
    # float32 leaves ~1e-7 of rounding. Leaving out the gate-free terms keeps dg accurate.
    rng = np.random.default_rng(14)
    q, k, v, _, S0 = make_inputs(rng, 1, 1, 100, 4, 4, dtype=np.float32)
    g = np.full(q.shape, -30.0, dtype=np.float32)
    do = rng.standard_normal(v.shape).astype(np.float32)
    dS_T = rng.standard_normal(S0.shape).astype(np.float32)
    o, S_T, cache = chunked.forward(q, k, v, g, initial_state=S0)
    dq, dk, dv, dg, dS0 = chunked.backward(do, dS_T, cache)
    dg_ref = recurrent.backward(do, dS_T, recurrent.forward(q, k, v, g, initial_state=S0)[2])[3]
    plain = gate_identity.gate_grad_from_identity(q, dq, k, dk, S_T, dS_T)
    assert rel_err(plain, dg_ref) > 1e3  # noise a thousand times the true dg
    assert rel_err(dg, dg_ref) < 1e-4


@pytest.mark.parametrize("block_entries, n_blocks", [(30, 12), (90, 6), (240, 2), (10 ** 6, 1)],
                         ids=["1-head", "3-heads-ragged", "2-rows", "all"])
def test_blocks_of_heads_do_not_change_the_result(monkeypatch, block_entries, n_blocks):
    # forward and backward run on blocks of (batch, head) pairs, a cache measure only: any block
    # size gives the numbers of one block holding everything. T * max(K, V) = 30 per head here.
    rng = np.random.default_rng(15)
    B, H, T, K, V = 3, 4, 10, 3, 2
    q, k, v, g, S0 = make_inputs(rng, B, H, T, K, V)
    do, dS_T = rng.standard_normal((B, H, T, V)), rng.standard_normal((B, H, K, V))

    def run():
        o, S_T, cache = chunked.forward(q, k, v, g, initial_state=S0, chunk_size=4,
                                        sub_chunk_size=3)
        return [o, S_T, *chunked.backward(do, dS_T, cache)]

    whole = run()
    monkeypatch.setattr(chunked, "BLOCK_ENTRIES", block_entries)
    assert len(chunked._blocks(B, H, T * max(K, V))) == n_blocks
    for name, x, ref in zip(["o", "S_T", "dq", "dk", "dv", "dg", "dS0"], run(), whole):
        assert rel_err(x, ref) < 1e-14, name


@pytest.mark.parametrize("T, C, with_S0", [(9, 4, True), (9, 4, False), (8, 8, False),
                                           (8, 8, True), (7, 2, True)],
                         ids=["ragged-S0", "ragged", "one-chunk", "one-chunk-S0", "four-chunks"])
def test_without_the_final_state_the_cache_stops_at_H_N_minus_1(T, C, with_S0, path):
    rng = np.random.default_rng(16)
    q, k, v, g, S0 = make_inputs(rng, 2, 2, T, 3, 2, initial_state=with_S0)
    do, dS_T = rng.standard_normal((2, 2, T, 2)), rng.standard_normal((2, 2, 3, 2))
    o, S_T, cache = chunked.forward(q, k, v, g, initial_state=S0, chunk_size=C)
    o_no, none, cache_no = chunked.forward(q, k, v, g, initial_state=S0, chunk_size=C,
                                           output_final_state=False)
    N = -(-T // C)
    assert none is None and not cache_no.has_final_state
    assert cache_no.states.shape == (2, 2, N, 3, 2)  # H_0 .. H_{N-1}
    np.testing.assert_array_equal(o_no, o)
    np.testing.assert_array_equal(cache_no.states, cache.states[:, :, :N])
    # final_state recomputes S_T from H_{N-1} and the last chunk, the forward's operations
    assert rel_err(chunked.final_state(cache_no), S_T) < 1e-14
    np.testing.assert_array_equal(chunked.final_state(cache), S_T)
    # backward never reads S_T: with or without it, every gradient is the same, dS_T included
    for d_final_state in (None, dS_T):
        for got, want in zip(chunked.backward(do, d_final_state, cache_no),
                             chunked.backward(do, d_final_state, cache)):
            np.testing.assert_array_equal(got, want)


def test_final_state_gradient_without_the_final_state_matches_finite_differences():
    # the use the backward allows: S_T recomputed by final_state after a forward without it,
    # and a loss on S_T, whose gradient reaches the inputs through d_final_state
    rng = np.random.default_rng(17)
    q, k, v, g, S0 = make_inputs(rng, 1, 1, 7, 2, 3)
    douts = [rng.standard_normal((1, 1, 7, 3)), rng.standard_normal((1, 1, 2, 3))]

    def forward(**inputs):
        o, none, cache = chunked.forward(**inputs, chunk_size=3, output_final_state=False)
        assert none is None
        return o, chunked.final_state(cache), cache

    gradcheck(forward, chunked.backward, dict(q=q, k=k, v=v, g=g, initial_state=S0),
              douts=douts)


@pytest.mark.parametrize("bad", [None, 0, 1, "no", "False"], ids=repr)
def test_output_final_state_must_be_true_or_false(bad):
    q, k, v, g, _ = make_inputs(np.random.default_rng(18), 1, 1, 4, 2, 2)
    with pytest.raises(ValueError, match="output_final_state"):
        chunked.forward(q, k, v, g, output_final_state=bad)


def test_final_state_refuses_what_is_not_a_chunked_cache():
    q, k, v, g, _ = make_inputs(np.random.default_rng(19), 1, 1, 4, 2, 2)
    with pytest.raises(ValueError, match="cache"):
        chunked.final_state(recurrent.forward(q, k, v, g)[2])


@pytest.mark.parametrize("do_scale", [1.0, 1e15], ids=["do-1", "do-1e15"])
def test_backward_uses_the_kept_mild_chunks_only_where_do_leaves_room(do_scale):
    # the forward keeps each chunk's one matmul (mild gates); the backward uses it as it is,
    # which gives the numbers of making it again (dv to rounding: the kept matmul has the
    # pairs u = t on its diagonal). A do of 1e15 leaves (M3) no room: the backward halves the
    # chunk instead, exactly as without the kept pieces, and stays finite.
    rng = np.random.default_rng(20)
    q, k, v, _, S0 = make_inputs(rng, 2, 2, 128, 8, 8, dtype=np.float32)
    g = np.full(q.shape, -0.01, dtype=np.float32)
    do = (rng.standard_normal(v.shape) * do_scale).astype(np.float32)
    o, S_T, cache = chunked.forward(q, k, v, g, initial_state=S0)
    assert cache.mild is not None and cache.mild.A.shape == (2, 2, 2, 64, 64)
    got = chunked.backward(do, S_T, cache)
    want = chunked.backward(do, S_T, cache._replace(mild=None))
    for name, x, ref in zip(["dq", "dk", "dv", "dg", "dS0"], got, want):
        assert np.isfinite(x).all(), name
        if name == "dv" and do_scale == 1.0:
            assert 0 < rel_err(x, ref) < 1e-6
        else:
            np.testing.assert_array_equal(x, ref, err_msg=name)


def test_a_whole_chunk_has_its_self_pairs_on_the_diagonal_of_its_matmul():
    # a chunk that is one mild block: its matmul keeps the pairs u = t too (mask u <= t), the
    # factors exp(b_t - b_first) exp(b_first - b_t) = 1 to rounding, so o and dv get A_self
    # from it. dq, dk and dg keep the pairs u = t apart (dA masked to u < t): the gate
    # gradient holds no term of them, bit for bit as when the pieces are made again.
    rng = np.random.default_rng(21)
    q, k, v, _, S0 = make_inputs(rng, 2, 2, 128, 8, 8)
    g = -rng.uniform(0.0, 0.1, q.shape)
    do, dS_T = rng.standard_normal(v.shape), rng.standard_normal(S0.shape)
    o, S_T, cache = chunked.forward(q, k, v, g, initial_state=S0, scale=0.5)
    A_self = 0.5 * np.einsum("bhtk,bhtk->bht", q, k).reshape(2, 2, 2, 64)
    assert rel_err(np.diagonal(cache.mild.A, axis1=-2, axis2=-1), A_self) < 1e-15
    *ref, ref_cache = recurrent.forward(q, k, v, g, initial_state=S0, scale=0.5)
    assert rel_err(o, ref[0]) < 1e-14
    got = chunked.backward(do, dS_T, cache)
    apart = chunked.backward(do, dS_T, cache._replace(mild=None))
    for name, x, y, r in zip(["dq", "dk", "dv", "dg", "dS0"], got, apart,
                             recurrent.backward(do, dS_T, ref_cache)):
        assert rel_err(x, r) < 1e-13, name
        if name == "dv":
            assert rel_err(x, y) < 1e-15
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)
