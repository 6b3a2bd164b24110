"""gla_np against a real fla GLA model: load, logits and gradients, save bit for bit, and every
way a checkpoint can be refused (tests/data/README.md says where the data comes from)."""

import dataclasses
import json
import os
import shutil
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gla_np import _safetensors, fla, lm
from gla_np.layers.model import GLAConfig

DATA = os.path.join(os.path.dirname(__file__), "data")
TINY = os.path.join(DATA, "fla-gla-tiny")
REF = np.load(os.path.join(DATA, "fla_gla_tiny_reference.npz"))


def rel(ours, theirs):
    """Frobenius norm of the difference over the norm of fla's."""
    return float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))


@pytest.fixture(scope="module")
def tiny():
    return fla.load(TINY)


@pytest.mark.parametrize("form", ["chunk", "recurrent", "parallel"])
def test_logits_match_fla(tiny, form):
    config, params = tiny
    config = dataclasses.replace(config, form=form)
    short, _ = lm.forward(params, REF["ids_short"], config)
    long, _ = lm.forward(params, REF["ids_long"], config)
    assert rel(short, REF["logits_short"]) < 1e-5  # fla's fused recurrent kernel, float32
    assert rel(long, REF["logits_long"]) < 2e-3  # fla's chunk kernel, TF32 dot products


def test_the_output_norm_eps_is_what_made_the_difference(tiny):
    config, params = tiny
    layer_default = dataclasses.replace(config, o_norm_eps=1e-5)  # fla's layer built alone
    logits, _ = lm.forward(params, REF["ids_short"], layer_default)
    assert rel(logits, REF["logits_short"]) > 0.1


def test_float32_load_matches_fla(tmp_path):
    config, params = fla.load(TINY, dtype="float32")
    assert config.dtype == "float32" and all(p.dtype == np.float32 for p in params.values())
    logits, _ = lm.forward(params, REF["ids_short"], config)
    assert logits.dtype == np.float32 and rel(logits, REF["logits_short"]) < 1e-5


def test_gradients_match_fla_autograd(tiny):
    config, params = tiny
    logits, cache = lm.forward(params, REF["ids_short"], config)
    grads = fla.to_fla(lm.backward(REF["dlogits_short"].astype(np.float64), cache), config)
    theirs = {k.split("/", 1)[1]: REF[k] for k in REF.files if k.startswith("grad_short/")}
    assert set(grads) == set(theirs)
    for name, g in grads.items():
        assert g.shape == theirs[name].shape, name
        assert rel(g, theirs[name]) < 1e-4, name


def test_save_of_the_loaded_model_is_fla_file_bit_for_bit(tiny, tmp_path):
    config, params = tiny
    fla.save(tmp_path, config, params)
    with open(os.path.join(TINY, "model.safetensors"), "rb") as a, \
            open(tmp_path / "model.safetensors", "rb") as b:
        assert a.read() == b.read()  # the same names, shapes, layout and every bit
    again_config, again = fla.load(tmp_path)
    assert again_config == config and list(again) == list(params)
    assert all(np.array_equal(again[k], params[k]) for k in params)


def _random_model(seed=0, **kw):
    opts = dict(embed_dim=8, hidden_size=8, num_layers=2, num_heads=2, head_dim=2,
                value_head_dim=4, intermediate_size=12, use_short_conv=True, dropout=0.0)
    opts.update(kw)
    config = GLAConfig(**opts)
    params = lm.init_params(config, 11, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)  # float32-exact values, so that save loses nothing
    return config, {k: (v + rng.standard_normal(v.shape)).astype(np.float32).astype(np.float64)
                    for k, v in params.items()}


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_round_trip_is_exact_with_key_and_value_sizes_differing(tmp_path, tied):
    config, params = _random_model(tie_word_embeddings=tied)
    fla.save(tmp_path, config, params)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["expand_k"] == 0.5 and written["expand_v"] == 1.0  # K = 2, V = 4, D = 8
    assert written["tie_word_embeddings"] is tied
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "model.safetensors").st_mode & 0o777 == 0o666 & ~umask
    loaded_config, loaded = fla.load(tmp_path)
    assert loaded_config == dataclasses.replace(config, intermediate_size=12)
    assert list(loaded) == list(params)
    assert all(np.array_equal(loaded[k], params[k]) for k in params)
    ids = np.random.default_rng(2).integers(0, 11, (2, 5))
    np.testing.assert_array_equal(lm.forward(loaded, ids, loaded_config)[0],
                                  lm.forward(params, ids, config)[0])


@given(heads=st.integers(1, 3), K=st.integers(1, 3), V=st.integers(1, 3),
       D=st.integers(1, 6), layers=st.integers(1, 2), conv=st.booleans(), tied=st.booleans(),
       F=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_round_trip_any_sizes(tmp_path_factory, heads, K, V, D, layers, conv, tied, F, seed):
    config, params = _random_model(seed, embed_dim=D, hidden_size=D, num_layers=layers,
                                   num_heads=heads, head_dim=K, value_head_dim=V,
                                   intermediate_size=F, use_short_conv=conv,
                                   tie_word_embeddings=tied, gate_rank=16)
    folder = tmp_path_factory.mktemp("ckpt")
    fla.save(folder, config, params)
    loaded_config, loaded = fla.load(folder)
    assert loaded_config == config and list(loaded) == list(params)
    assert all(np.array_equal(loaded[k], params[k]) for k in params)


def test_fla_layouts_and_names():
    config, params = _random_model()
    tensors = fla.to_fla(params, config)
    assert tensors["model.layers.0.attn.q_proj.weight"].shape == (4, 8)  # (out, in)
    assert tensors["model.layers.0.attn.v_proj.weight"].shape == (8, 8)
    assert tensors["model.layers.1.attn.v_conv1d.weight"].shape == (8, 1, 4)  # (C, 1, W)
    np.testing.assert_array_equal(tensors["model.layers.1.attn.v_conv1d.weight"][:, 0, :],
                                  params["blocks.1.attn.conv_v"].T)
    assert tensors["lm_head.weight"].shape == (11, 8)
    assert "model.layers.0.attn.g_norm.weight" in fla.names(config, fuse_norm=False)
    back = fla.from_fla(tensors, config)
    assert all(np.array_equal(back[k], params[k]) for k in params)


@pytest.mark.parametrize("hidden, ratio, want", [(64, None, 256), (2048, 4, 5632),
                                                 (1024, None, 2816), (96, 2, 256)])
def test_fla_mlp_size_rule(hidden, ratio, want):
    assert fla.mlp_size(hidden, ratio) == want


def _fla_config(**changes):
    c = json.loads(open(os.path.join(TINY, "config.json")).read())
    c.update(changes)
    return c


def test_config_defaults_follow_fla():
    c = _fla_config()
    for key in ("intermediate_size", "expand_k", "hidden_ratio"):
        c.pop(key)
    config, vocab, fuse_norm = fla.config_from_fla(c)
    assert (config.head_dim, config.value_head_dim) == (16, 32)  # expand_k 0.5, expand_v 1
    assert config.intermediate_size == 256 and vocab == 256 and fuse_norm
    assert config.norm_eps == 1e-6 and config.o_norm_eps is None


@pytest.mark.parametrize("key, value", [
    ("feature_map", "relu"), ("use_gv", True), ("use_gk", False), ("num_kv_heads", 1),
    ("clamp_min", -1.0), ("use_output_gate", False), ("hidden_act", "gelu"),
    ("elementwise_affine", False), ("attn", {"layers": [1], "num_heads": 2}),
    ("attnres_block_size", 4), ("gate_low_rank_dim", 32), ("model_type", "gla2"),
    ("attn_mode", "parallel"), ("expand_k", 0.3), ("rope_theta", 10000.0)])
def test_config_keys_that_change_the_math_are_refused(key, value):
    with pytest.raises(ValueError, match=key):
        fla.config_from_fla(_fla_config(**{key: value}))


@pytest.mark.parametrize("key, value", [
    ("attn_mode", "fused_recurrent"), ("fuse_norm", False), ("fuse_swiglu", False),
    ("use_cache", False), ("num_kv_heads", 2), ("use_l2warp", True), ("pad_token_id", 0)])
def test_speed_and_training_keys_are_accepted(key, value):
    config, _, _ = fla.config_from_fla(_fla_config(**{key: value}))
    assert config == fla.config_from_fla(_fla_config())[0]


def _copy(tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(TINY, folder)
    os.chmod(folder / "model.safetensors", 0o644)
    os.chmod(folder / "config.json", 0o644)
    return folder


def _header(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write(path, header, data):
    text = json.dumps(header).encode()
    open(path, "wb").write(struct.pack("<Q", len(text)) + text + data)


def test_sharded_checkpoint_loads_the_same(tiny, tmp_path):
    folder = _copy(tmp_path)
    header, data = _header(folder / "model.safetensors")
    header.pop("__metadata__")
    names = sorted(header)
    shards, weight_map = {}, {}
    for i, part in enumerate((names[:10], names[10:])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        h, chunks, offset = {}, [], 0
        for n in part:
            b, e = header[n]["data_offsets"]
            h[n] = {**header[n], "data_offsets": [offset, offset + e - b]}
            chunks.append(data[b:e])
            offset += e - b
            weight_map[n] = file
        shards[file] = (h, b"".join(chunks))
    os.remove(folder / "model.safetensors")
    for file, (h, d) in shards.items():
        _write(folder / file, h, d)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    config, params = fla.load(folder)
    assert config == tiny[0] and all(np.array_equal(params[k], tiny[1][k]) for k in params)


@pytest.mark.parametrize("kind", ["F16", "BF16", "F64"])
def test_other_stored_dtypes_are_widened_exactly(tiny, tmp_path, kind):
    folder = _copy(tmp_path)
    header, data = _header(folder / "model.safetensors")
    header.pop("__metadata__")
    h, chunks, offset, expect = {}, [], 0, {}
    for n in sorted(header):
        b, e = header[n]["data_offsets"]
        x = np.frombuffer(data[b:e], dtype="<f4")
        if kind == "F16":
            stored = x.astype("<f2")
            value = stored.astype(np.float64)
        elif kind == "BF16":
            stored = (x.view("<u4") >> 16).astype("<u2")  # keep the high 16 bits
            value = (stored.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        else:
            stored = x.astype("<f8") / 3  # a value float32 cannot hold
            value = stored
        h[n] = {**header[n], "dtype": kind, "data_offsets": [offset, offset + stored.nbytes]}
        chunks.append(stored.tobytes())
        offset += stored.nbytes
        expect[n] = value.reshape(header[n]["shape"])
    _write(folder / "model.safetensors", h, b"".join(chunks))
    config, params = fla.load(folder)
    got = fla.to_fla(params, config)
    assert all(np.array_equal(got[n], expect[n]) for n in expect)


def _break(folder, how):
    path = folder / "model.safetensors"
    header, data = _header(path)
    if how == "truncated":
        raw = open(path, "rb").read()
        open(path, "wb").write(raw[:-100])
    elif how == "short":
        open(path, "wb").write(b"\x01\x02")
    elif how == "lying-size":
        header["model.norm.weight"]["shape"] = [65]
        _write(path, header, data)
    elif how == "lying-length":
        raw = open(path, "rb").read()
        open(path, "wb").write(struct.pack("<Q", len(raw)) + raw[8:])
    elif how == "overlap":
        header["model.norm.weight"]["data_offsets"] = [0, 256]
        _write(path, header, data)
    elif how == "missing":
        header.pop("model.norm.weight")
        _write(path, header, data[:-256])
    elif how == "extra":
        header["model.extra.weight"] = {"dtype": "F32", "shape": [1],
                                        "data_offsets": [len(data), len(data) + 4]}
        _write(path, header, data + b"\0" * 4)
    elif how == "mis-shaped":
        header["model.norm.weight"]["shape"] = [8, 8]
        _write(path, header, data)
    elif how == "dtype":
        header["model.norm.weight"]["dtype"] = "I32"
        _write(path, header, data)
    elif how == "no-config":
        os.remove(folder / "config.json")


@pytest.mark.parametrize("how, match", [
    ("truncated", "truncated file"), ("short", "truncated"), ("lying-size", "the header lies"),
    ("lying-length", "the header claims"), ("overlap", "overlaps"),
    ("missing", r"missing \['model.norm.weight'\]"), ("extra", r"extra \['model.extra.weight'\]"),
    ("mis-shaped", "'model.norm.weight' has shape"), ("dtype", "dtype 'I32'"),
    ("no-config", "config.json: missing")])
def test_broken_checkpoints_are_refused_by_name(tmp_path, how, match):
    folder = _copy(tmp_path)
    _break(folder, how)
    with pytest.raises(ValueError, match=match):
        fla.load(folder)


def test_save_refuses_what_fla_cannot_express_and_writes_nothing(tmp_path):
    config, params = _random_model()
    for change, match in [({"gate": "scalar"}, "gate"), ({"gate_rank": 4}, "gate_rank"),
                          ({"norm": "layernorm"}, "norm"), ({"o_norm_eps": 1e-5}, "o_norm_eps")]:
        with pytest.raises(ValueError, match=match):
            fla.save(tmp_path / "out", dataclasses.replace(config, **change), params)
    with pytest.raises(ValueError, match="extra"):
        fla.save(tmp_path / "out", config, {**params, "stray": np.zeros(1)})
    with pytest.raises(ValueError, match="blocks.0.attn.W_q"):
        fla.save(tmp_path / "out", config, {**params, "blocks.0.attn.W_q": np.zeros((2, 2))})
    assert not (tmp_path / "out").exists()


def test_tied_checkpoint_may_still_hold_the_head_but_only_equal(tmp_path):
    # some writers keep lm_head.weight in a tied checkpoint: accepted only as the embedding's copy
    config, params = _random_model(tie_word_embeddings=True)
    fla.save(tmp_path, config, params)
    tensors = fla.to_fla(params, config)
    for head, ok in ((tensors["model.embeddings.weight"], True),
                     (tensors["model.embeddings.weight"] + 1, False)):
        written = {k: v.astype(np.float32) for k, v in tensors.items()}
        written["lm_head.weight"] = head.astype(np.float32)
        _safetensors.write(tmp_path / "model.safetensors", written)
        if ok:
            loaded_config, loaded = fla.load(tmp_path)
            assert "head.weight" not in loaded
            assert np.array_equal(loaded["embedding.weight"], params["embedding.weight"])
        else:
            with pytest.raises(ValueError, match="'lm_head.weight' differs"):
                fla.load(tmp_path)
