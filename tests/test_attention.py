"""The dispatcher routes every form, and every form refuses bad input naming the argument."""

import numpy as np
import pytest

from gla_np import chunked, parallel, recurrent
from gla_np.recurrence.attention import AttentionCache, gla_attention, gla_attention_backward

FORMS = ["recurrent", "parallel", "chunk"]


def make_inputs(seed=0, B=2, T=5, H=2, K=3, V=4, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((2, B, H, T, K)).astype(dtype)
    v = rng.standard_normal((B, H, T, V)).astype(dtype)
    g = -rng.uniform(0.05, 2.0, (B, H, T, K)).astype(dtype)
    S0 = rng.standard_normal((B, H, K, V)).astype(dtype)
    do = rng.standard_normal((B, H, T, V)).astype(dtype)
    dS_T = rng.standard_normal((B, H, K, V)).astype(dtype)
    return q, k, v, g, S0, do, dS_T


@pytest.mark.parametrize("form, module", [("recurrent", recurrent), ("parallel", parallel)],
                         ids=["recurrent", "parallel"])
def test_routes_to_the_form_bit_for_bit(form, module):
    q, k, v, g, S0, do, dS_T = make_inputs()
    o, S_T, cache = gla_attention(q, k, v, g, form=form, scale=0.4, initial_state=S0)
    o_ref, S_ref, inner = module.forward(q, k, v, g, scale=0.4, initial_state=S0)
    assert isinstance(cache, AttentionCache) and cache.form == form
    assert type(cache.inner) is type(inner)
    np.testing.assert_array_equal(o, o_ref)
    np.testing.assert_array_equal(S_T, S_ref)
    grads = gla_attention_backward(do, dS_T, cache)
    for got, want in zip(grads, module.backward(do, dS_T, inner)):
        np.testing.assert_array_equal(got, want)


def test_routes_to_the_chunked_form_with_its_options():
    q, k, v, g, S0, do, dS_T = make_inputs(T=9)
    o, S_T, cache = gla_attention(q, k, v, g, initial_state=S0, chunk_size=4)  # default "chunk"
    o_ref, S_ref, inner = chunked.forward(q, k, v, g, initial_state=S0, chunk_size=4)
    assert cache.form == "chunk" and type(cache.inner) is type(inner)
    np.testing.assert_array_equal(o, o_ref)
    np.testing.assert_array_equal(S_T, S_ref)
    grads = gla_attention_backward(do, dS_T, cache)
    for got, want in zip(grads, chunked.backward(do, dS_T, inner)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_every_form_gives_the_same_answer_through_the_dispatcher(dtype):
    q, k, v, g, S0, do, dS_T = make_inputs(seed=1, T=7, dtype=dtype)
    results = {}
    for form in FORMS:
        options = dict(chunk_size=3) if form == "chunk" else {}
        o, S_T, cache = gla_attention(q, k, v, g, form=form, initial_state=S0, **options)
        results[form] = (o, S_T, *gla_attention_backward(do, dS_T, cache))
    tol = 1e-10 if dtype == np.float64 else 1e-4
    for form in ("parallel", "chunk"):
        for got, want in zip(results[form], results["recurrent"]):
            assert got.dtype == dtype
            assert np.abs(got - want).max() <= tol * np.abs(want).max(), form


def test_backward_accepts_none_upstream_gradients_for_every_form():
    q, k, v, g, *_ = make_inputs(seed=2)
    for form in FORMS:
        _, _, cache = gla_attention(q, k, v, g, form=form)
        dq, dk, dv, dg, dS0 = gla_attention_backward(None, None, cache)
        assert dS0 is None and not (dq.any() or dk.any() or dv.any() or dg.any()), form


# --- bad input: one shared validation, the same message from every form -------------------

Q = np.zeros((1, 2, 3, 4))  # B=1, H=2, T=3, K=4
Vv = np.zeros((1, 2, 3, 5))  # V=5
GOOD = dict(q=Q, k=Q, v=Vv, g=Q, initial_state=np.zeros((1, 2, 4, 5)), scale=None)

BAD = [
    ("k-shape", dict(k=np.zeros((1, 2, 3, 5))), r"^k: expected shape \(1, 2, 3, 4\)"),
    ("v-shape", dict(v=np.zeros((1, 2, 4, 5))), r"^v: expected shape \(1, 2, 3, \*\)"),
    ("g-shape", dict(g=np.zeros((1, 2, 3, 1))), r"^g: expected shape \(1, 2, 3, 4\)"),
    ("state-shape", dict(initial_state=np.zeros((1, 2, 5, 4))),
     r"^initial_state: expected shape \(1, 2, 4, 5\)"),
    ("q-rank", dict(q=np.zeros((2, 3, 4))), r"^q: expected 4 dimensions"),
    ("v-rank", dict(v=np.zeros((1, 2, 3, 5, 1))), r"^v: expected 4 dimensions"),
    ("state-rank", dict(initial_state=np.zeros((2, 4, 5))), r"^initial_state: expected 4 dim"),
    ("positive-gate", dict(g=np.full((1, 2, 3, 4), 1e-3)), r"^g: expected log forget gates <= 0"),
    ("nan-q", dict(q=np.full((1, 2, 3, 4), np.nan)), r"^q: contains nan or inf"),
    ("inf-v", dict(v=np.full((1, 2, 3, 5), np.inf)), r"^v: contains nan or inf"),
    ("nan-gate", dict(g=np.full((1, 2, 3, 4), np.nan)), r"^g: contains nan or \+inf"),
    ("plus-inf-gate", dict(g=np.full((1, 2, 3, 4), np.inf)), r"^g: contains nan or \+inf"),
    ("dtype-mix", dict(k=Q.astype(np.float32)), r"one dtype .*k: float32"),
    ("int-dtype", dict(v=np.zeros((1, 2, 3, 5), dtype=int)), r"^v: expected a float32 or float64"),
    ("list", dict(q=Q.tolist()), r"^q: expected a NumPy array"),
    ("empty-T", dict(q=np.zeros((1, 2, 0, 4))), r"^q: expected shape .* >= 1"),
    ("scale-zero", dict(scale=0.0), r"^scale: expected a positive finite number"),
    ("scale-negative", dict(scale=-1.0), r"^scale:"),
    ("scale-nan", dict(scale=float("nan")), r"^scale:"),
    ("scale-inf", dict(scale=float("inf")), r"^scale:"),
    ("scale-bool", dict(scale=True), r"^scale:"),
    ("scale-str", dict(scale="0.5"), r"^scale:"),
]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bad, pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_refused_naming_the_argument(form, bad, pattern):
    args = {**GOOD, **bad}
    with pytest.raises(ValueError, match=pattern):
        gla_attention(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("g"), form=form,
                      **args)


def test_unknown_form_is_refused_naming_form():
    with pytest.raises(ValueError, match=r"^form: expected one of"):
        gla_attention(Q, Q, Vv, Q, form="linear")


@pytest.mark.parametrize("form", ["recurrent", "parallel"])
@pytest.mark.parametrize("option, value", [("chunk_size", 16), ("sub_chunk_size", 4)])
def test_chunk_options_with_another_form_are_refused(form, option, value):
    with pytest.raises(ValueError, match=f"^{option}: only used by form='chunk'"):
        gla_attention(Q, Q, Vv, Q, form=form, **{option: value})


def test_backward_refuses_a_foreign_cache_naming_cache():
    _, _, inner = recurrent.forward(Q, Q, Vv, Q)
    with pytest.raises(ValueError, match=r"^cache: expected the AttentionCache"):
        gla_attention_backward(None, None, inner)
    with pytest.raises(ValueError, match=r"^cache.form:"):
        gla_attention_backward(None, None, AttentionCache("linear", inner))


MODULES = {"recurrent": recurrent, "parallel": parallel, "chunk": chunked}
NOT_CACHES = [("None", lambda caches: None), ("tuple", lambda caches: (1, 2, 3)),
              ("array", lambda caches: Q), ("dict", lambda caches: {"q": Q})]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("what, make", NOT_CACHES, ids=[n[0] for n in NOT_CACHES])
def test_every_backward_refuses_a_non_cache_naming_cache(form, what, make):
    caches = {f: gla_attention(Q, Q, Vv, Q, form=f)[2] for f in FORMS}
    with pytest.raises(ValueError, match=r"^cache: expected the \w+Cache returned by"):
        MODULES[form].backward(None, None, make(caches))
    with pytest.raises(ValueError, match=r"^cache: expected the AttentionCache"):
        gla_attention_backward(None, None, make(caches))
    with pytest.raises(ValueError, match=r"^cache: expected the \w+Cache returned by"):
        gla_attention_backward(None, None, AttentionCache(form, make(caches)))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("other", FORMS)
@pytest.mark.parametrize("layout", ["BHTK", "BTHK"])
def test_every_backward_refuses_another_forms_cache_naming_cache(form, other, layout):
    if form == other:
        return  # (the pair is the happy path, tested above)
    inner = gla_attention(Q, Q, Vv, Q, form=other)[2].inner
    want = {"recurrent": "RecurrentCache", "parallel": "ParallelCache", "chunk": "ChunkedCache"}
    pattern = rf"^cache: expected the {want[form]} returned by \S+, got {type(inner).__name__}$"
    with pytest.raises(ValueError, match=pattern):
        MODULES[form].backward(None, None, inner)
    with pytest.raises(ValueError, match=pattern):
        gla_attention_backward(None, None, AttentionCache(form, inner, layout))


# --- layout: fla's (B, T, H, K) by name, and a hint when the shapes look like the other -----

@pytest.mark.parametrize("form", FORMS)
def test_layout_bthk_is_the_head_major_result_transposed(form):
    q, k, v, g, S0, do, dS_T = make_inputs(seed=5, B=2, T=6, H=3)
    sw = [np.ascontiguousarray(np.swapaxes(x, 1, 2)) for x in (q, k, v, g, do)]
    o, S_T, cache = gla_attention(q, k, v, g, form=form, initial_state=S0)
    grads = gla_attention_backward(do, dS_T, cache)
    o2, S_T2, cache2 = gla_attention(*sw[:4], form=form, initial_state=S0, layout="BTHK")
    grads2 = gla_attention_backward(sw[4], dS_T, cache2)
    np.testing.assert_array_equal(np.swapaxes(o2, 1, 2), o)
    np.testing.assert_array_equal(S_T2, S_T)
    for got, want in zip(grads2[:4], grads[:4]):
        assert got.shape == (2, 6, 3, want.shape[3])
        np.testing.assert_array_equal(np.swapaxes(got, 1, 2), want)
    np.testing.assert_array_equal(grads2[4], grads[4])


def test_state_shape_error_names_the_layout_the_shapes_look_like():
    B, T, H, K, V = 1, 7, 2, 4, 5
    q, v = np.zeros((B, T, H, K)), np.zeros((B, T, H, V))  # fla's layout
    S0 = np.zeros((B, H, K, V))
    with pytest.raises(ValueError, match=r"^initial_state: expected shape \(1, 7, 4, 5\).*look "
                                         r"like the \(B, T, H, K\) layout \(BTHK\).*layout='BTHK'"):
        gla_attention(q, q, v, q, initial_state=S0)
    with pytest.raises(ValueError, match=r"look like the \(B, H, T, K\) layout \(BHTK\)"):
        gla_attention(*(np.swapaxes(x, 1, 2) for x in (q, q, v, q)), initial_state=S0,
                      layout="BTHK")
    # a state that fits neither layout gets no hint
    with pytest.raises(ValueError, match=r"^initial_state: expected shape \(1, 7, 4, 5\), got "
                                         r"\(1, 3, 4, 5\)$"):
        gla_attention(q, q, v, q, initial_state=np.zeros((1, 3, 4, 5)))


def test_layout_is_checked_and_bthk_do_shape_is_named_in_its_layout():
    with pytest.raises(ValueError, match=r"^layout: expected one of"):
        gla_attention(Q, Q, Vv, Q, layout="BHKT")
    _, _, cache = gla_attention(Q, Q, Vv, Q, layout="BTHK")  # (B, T, H, K) = (1, 2, 3, 4)
    with pytest.raises(ValueError, match=r"^do: expected shape \(1, 2, 3, 5\) \(B, T, H, V\)"):
        gla_attention_backward(np.zeros((1, 3, 2, 5)), None, cache)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("forward_dtype, upstream_dtype", [(np.float32, np.float64),
                                                           (np.float64, np.float32)],
                         ids=["f32-forward-f64-upstream", "f64-forward-f32-upstream"])
@pytest.mark.parametrize("name", ["do", "d_final_state"])
def test_upstream_gradient_of_another_dtype_is_refused_not_cast(form, forward_dtype,
                                                                upstream_dtype, name):
    q, k, v, g, S0, do, dS_T = make_inputs(dtype=forward_dtype)
    _, _, cache = gla_attention(q, k, v, g, form=form, initial_state=S0)
    upstream = {"do": do, "d_final_state": dS_T}
    upstream[name] = upstream[name].astype(upstream_dtype)
    pattern = (rf"^{name}: expected dtype {np.dtype(forward_dtype)} \(the forward's dtype\), "
               rf"got {np.dtype(upstream_dtype)}$")
    with pytest.raises(ValueError, match=pattern):
        gla_attention_backward(upstream["do"], upstream["d_final_state"], cache)


@pytest.mark.parametrize("form", FORMS)
def test_one_array_in_the_other_layout_is_named(form):
    q, v = np.zeros((1, 2, 5, 3)), np.zeros((1, 2, 5, 4))  # (B, H, T, .)
    swapped = np.zeros((1, 5, 2, 4))
    with pytest.raises(ValueError, match=r"^v: expected shape \(1, 2, 5, \*\), got \(1, 5, 2, 4\); "
                                         r"v looks like the \(B, T, H, K\) layout \(BTHK\)"):
        gla_attention(q, q, swapped, q, form=form)
    with pytest.raises(ValueError, match=r"^g: .*g looks like the \(B, H, T, K\) layout \(BHTK\) "
                                         r"while the others are \(B, T, H, K\) \(BTHK\)"):
        gla_attention(*(np.swapaxes(x, 1, 2) for x in (q, q, v)), q, form=form, layout="BTHK")
    _, _, cache = gla_attention(q, q, v, q, form=form)
    with pytest.raises(ValueError, match=r"^do: expected shape \(1, 2, 5, 4\), got \(1, 5, 2, 4\); "
                                         r"do looks like"):
        gla_attention_backward(swapped, None, cache)


@pytest.mark.parametrize("layout", ["BHTK", "BTHK"])
@pytest.mark.parametrize("form", FORMS)
def test_without_the_final_state_every_form_returns_none_and_the_same_rest(form, layout):
    q, k, v, g, S0, do, dS_T = make_inputs(seed=3, T=7)
    if layout == "BTHK":
        q, k, v, g, do = (np.ascontiguousarray(x.swapaxes(1, 2)) for x in (q, k, v, g, do))
    options = dict(chunk_size=3) if form == "chunk" else {}
    o, S_T, cache = gla_attention(q, k, v, g, form=form, initial_state=S0, layout=layout,
                                  **options)
    o_no, none, cache_no = gla_attention(q, k, v, g, form=form, initial_state=S0, layout=layout,
                                         output_final_state=False, **options)
    assert S_T is not None and none is None
    np.testing.assert_array_equal(o_no, o)
    # a gradient on S_T is taken either way: S_T is the same function of the inputs
    for d_final_state in (None, dS_T):
        for got, want in zip(gla_attention_backward(do, d_final_state, cache_no),
                             gla_attention_backward(do, d_final_state, cache)):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("form", FORMS)
def test_output_final_state_is_checked_by_every_form(form):
    q, k, v, g, *_ = make_inputs()
    with pytest.raises(ValueError, match="output_final_state"):
        gla_attention(q, k, v, g, form=form, output_final_state="no")


@pytest.mark.parametrize("bad, pattern", [(np.nan, r"^g: contains nan or \+inf"),
                                          (np.inf, r"^g: contains nan or \+inf"),
                                          (1e-30, r"^g: expected log forget gates <= 0")],
                         ids=["nan", "plus-inf", "tiny-positive"])
@pytest.mark.parametrize("form", FORMS)
def test_one_bad_gate_among_good_ones_is_found(form, bad, pattern):
    # the gate checks take one reduction when every gate is <= 0 (-inf included); one entry
    # that is not sends them to the passes that name the fault
    q, k, v, g, *_ = make_inputs()
    g[1, 0, 2, 1] = -np.inf  # allowed: a hard reset
    gla_attention(q, k, v, g, form=form)
    g[0, 1, 3, 2] = bad
    with pytest.raises(ValueError, match=pattern):
        gla_attention(q, k, v, g, form=form)
