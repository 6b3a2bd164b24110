"""fla's GLA language models in gla_np: load a checkpoint, run it, save one fla can load.

    config, params = fla.load("path/to/checkpoint")        # config.json + model.safetensors
    logits, cache = lm.forward(params, ids, config)        # fla's logits, in float64
    fla.save("path/to/out", config, params)                # GLAForCausalLM.from_pretrained loads it

fla (flash-linear-attention) is the PyTorch/Triton library whose ``GLAForCausalLM`` the trained
GLA checkpoints come from. Its model is gla_np's token model (``gla_np.lm``) with fla's sizes:
K = hidden * expand_k / H and V = hidden * expand_v / H per head (``head_dim`` and
``value_head_dim``), an FFN width from ``intermediate_size`` or fla's rule, every norm's eps from
``norm_eps`` (the per-head output norm's included), and maybe tied embeddings. Each fla tensor
is one gla_np parameter, transposed where torch stores a Linear weight as (out, in) and
reshaped for the short convolution's (C, 1, W); ``names`` lists the pairs, and docs/fla.md has
the table. A config key that would change the math in a way gla_np does not implement is
refused by name, never ignored.

Loading a folder you did not make is safe in the sense of docs/reliability.md: every file read
must be a regular file of bounded size, every JSON document is nested no deeper than a config
needs, every config value is type- and range-checked by name, and every size the config implies
is checked against the tensors the headers declare, and those against the bytes the files hold,
before anything is allocated. A NaN or inf weight is refused naming its tensor. Symbolic links
in the folder are followed (Hugging Face's cache is made of them: a snapshot folder links every
file to a blob elsewhere), so a folder may make ``load`` read any file you can read; what it
reads is still checked as a config or a safetensors file and never echoed whole.

The safetensors format is read and written by hand (``gla_np._safetensors``, about 150 lines):
it is an 8-byte length, a JSON header and raw little-endian bytes, which NumPy reads directly.
The ``safetensors`` package would be a second run-time dependency for that, and its NumPy
interface cannot return bfloat16, the dtype most released checkpoints use; doing it here also
lets ``load`` check every claim of a header before it reads any data.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from gla_np import _safetensors
from gla_np._files import parse_json, read_text, write_atomic
from gla_np.layers import ffn, gla_layer, model
from gla_np.layers.model import GLAConfig
from gla_np.training import lm

CONFIG, WEIGHTS, INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
GATE_RANK = GATE_NORMALIZER = 16  # fla's layer defaults, which its model never overrides
ATTN_MODES = ("chunk", "fused_recurrent", "fused_chunk")

# fla's GLAConfig defaults (fla 0.6.0), used for the keys a config.json leaves out.
DEFAULTS = {
    "hidden_size": 2048, "expand_k": 0.5, "expand_v": 1, "hidden_ratio": 4,
    "intermediate_size": None, "num_hidden_layers": 24, "num_heads": 4, "num_kv_heads": None,
    "feature_map": None, "attn_mode": "chunk", "use_short_conv": False, "conv_size": 4,
    "use_output_gate": True, "clamp_min": None, "hidden_act": "swish",
    "max_position_embeddings": 2048, "elementwise_affine": True, "norm_eps": 1e-6,
    "use_gk": True, "use_gv": False, "attn": None, "attnres_block_size": None,
    "use_cache": True, "pad_token_id": None, "bos_token_id": 1, "eos_token_id": 2,
    "tie_word_embeddings": False, "initializer_range": 0.02, "fuse_norm": True,
    "fuse_swiglu": True, "fuse_cross_entropy": True, "fuse_linear_cross_entropy": False,
    "use_l2warp": False, "vocab_size": 32000,
}

# Keys whose values gla_np cannot follow: the only value accepted, and why.
REFUSED = {
    "feature_map": (None, "a feature map on q and k is not implemented"),
    "num_kv_heads": (None, "grouped key/value heads are not implemented"),
    "use_output_gate": (True, "the layer always has its output gate"),
    "clamp_min": (None, "clamping the log gates is not implemented"),
    "hidden_act": ("swish", "the output gate and the FFN use swish only"),
    "elementwise_affine": (True, "the output norm always has its weight"),
    "use_gk": (True, "the key gate is GLA's forget gate, always on"),
    "use_gv": (False, "a value gate is not implemented"),
    "attn": (None, "hybrid models with softmax-attention layers are not implemented"),
    "attnres_block_size": (None, "attention residuals are not implemented"),
    "gate_low_rank_dim": (GATE_RANK, "fla's model uses rank 16"),
    "gate_logit_normalizer": (GATE_NORMALIZER, "fla's model uses 16"),
}

# Keys that change speed, training-only behaviour or bookkeeping, not the model's function.
ACCEPTED = {
    "attn_mode", "use_cache", "fuse_norm", "fuse_swiglu", "fuse_cross_entropy",
    "fuse_linear_cross_entropy", "use_l2warp", "initializer_range", "max_position_embeddings",
    "pad_token_id", "bos_token_id", "eos_token_id", "architectures", "model_type", "dtype",
    "torch_dtype", "transformers_version", "_name_or_path", "auto_map", "tokenizer_class",
    "return_dict", "output_attentions", "output_hidden_states",
}
HONOURED = {"hidden_size", "expand_k", "expand_v", "hidden_ratio", "intermediate_size",
            "num_hidden_layers", "num_heads", "use_short_conv", "conv_size", "norm_eps",
            "tie_word_embeddings", "vocab_size"}

# What each value gla_np uses must be: "int" (an integer in [1, MAX_SIZE]), "real" (a finite
# number > 0), "bool"; "?" after the kind allows null too (fla's "not set").
KINDS = {"hidden_size": "int", "num_hidden_layers": "int", "num_heads": "int",
         "vocab_size": "int", "conv_size": "int", "intermediate_size": "int?",
         "expand_k": "real", "expand_v": "real", "hidden_ratio": "real?", "norm_eps": "real",
         "use_short_conv": "bool", "tie_word_embeddings": "bool", "fuse_norm": "bool"}
MAX_SIZE = 2 ** 31 - 1  # any one size (a width, a vocabulary, a layer count): far above any model
MAX_JSON_BYTES = 16 * 2 ** 20  # config.json or the index: a few kB in practice


def _short(value):
    """``repr(value)``, cut to a length a one-line message can carry."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_value(key, value):
    """ValueError naming ``key`` unless ``value`` is of the kind ``KINDS[key]``."""
    kind = KINDS[key]
    if kind.endswith("?"):
        if value is None:
            return
        kind = kind[:-1]
    if kind == "bool":
        ok, want = isinstance(value, bool), "true or false"
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SIZE
        want = f"an integer in [1, {MAX_SIZE}]"
    else:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value) and value > 0)
        want = "a finite number > 0"
    if not ok:
        raise ValueError(f"config: {key}={_short(value)}, expected {want}"
                         + (" or null" if KINDS[key].endswith("?") else ""))


def mlp_size(hidden_size, hidden_ratio=None, intermediate_size=None):
    """fla's FFN width: ``intermediate_size``, else the multiple of 256 at or above
    ``int(hidden_size * hidden_ratio * 2/3)`` (``hidden_ratio`` None means 4)."""
    if intermediate_size is not None:
        return intermediate_size
    ratio = 4 if hidden_ratio is None else hidden_ratio
    return 256 * math.ceil(int(hidden_size * ratio * 2 / 3) / 256)


def config_from_fla(fla_config, dtype="float64"):
    """``(GLAConfig, vocab_size, fuse_norm)`` from fla's config dict; ValueError naming a key."""
    if not isinstance(fla_config, dict):
        raise ValueError(f"config: expected a JSON object, got {type(fla_config).__name__}")
    if fla_config.get("model_type") != "gla":
        raise ValueError(f"config: model_type={_short(fla_config.get('model_type'))}, expected "
                         f"'gla'")
    for key in fla_config:
        if key not in HONOURED and key not in ACCEPTED and key not in REFUSED:
            raise ValueError(f"config: unknown key {_short(key)[1:-1]}={_short(fla_config[key])}; "
                             f"gla_np cannot "
                             f"tell whether it changes the model, so it refuses it")
    c = {**DEFAULTS, **fla_config}
    for key in KINDS:
        _check_value(key, c[key])
    for key, (allowed, why) in REFUSED.items():
        value = c.get(key, allowed)
        ok = value in (None, c["num_heads"]) if key == "num_kv_heads" else value == allowed
        if not ok or (allowed is not None and isinstance(value, bool) != isinstance(allowed, bool)):
            raise ValueError(f"config: {key}={_short(value)} is not supported ({why}); expected "
                             f"{allowed!r}")
    if c["attn_mode"] not in ATTN_MODES:
        raise ValueError(f"config: attn_mode={_short(c['attn_mode'])}, expected one of "
                         f"{ATTN_MODES}")
    D, H = c["hidden_size"], c["num_heads"]
    sizes = {}
    for key, name in (("expand_k", "key"), ("expand_v", "value")):
        width = D * c[key]  # fla's rule: the total width, then split into heads
        if not width < MAX_SIZE:  # (D * expand can be inf; int() of it would overflow)
            raise ValueError(f"config: {key}={c[key]!r} gives a {name} width of {width:g}, "
                             f"more than {MAX_SIZE}")
        width = int(width)
        if width < 1 or width % H:
            raise ValueError(f"config: {key}={c[key]!r} gives a {name} width of {width}, not a "
                             f"positive multiple of num_heads={H}")
        sizes[key] = width // H
    ffn_width = c["intermediate_size"]
    if ffn_width is None:
        ratio = 4 if c["hidden_ratio"] is None else c["hidden_ratio"]
        ffn_width = mlp_size(D, ratio) if D * ratio * 2 / 3 < MAX_SIZE else math.inf
        if not 1 <= ffn_width <= MAX_SIZE:
            raise ValueError(f"config: hidden_ratio={c['hidden_ratio']!r} gives an FFN width "
                             f"of {ffn_width}, expected 1 to {MAX_SIZE}")
    config = GLAConfig(
        embed_dim=D, hidden_size=D, num_layers=c["num_hidden_layers"], num_heads=H,
        head_dim=sizes["expand_k"], value_head_dim=sizes["expand_v"], dropout=0.0,
        gate="vector", gate_rank=GATE_RANK, gate_normalizer=GATE_NORMALIZER, norm="rmsnorm",
        norm_eps=c["norm_eps"], use_short_conv=c["use_short_conv"], conv_size=c["conv_size"],
        intermediate_size=ffn_width,
        tie_word_embeddings=c["tie_word_embeddings"], dtype=dtype)
    return config, c["vocab_size"], c["fuse_norm"]


def names(config, fuse_norm=True):
    """``{fla name: (gla_np name, layout)}`` in gla_np's order; layout "" (same array), "T"
    (transposed: torch Linear weights are (out, in)) or "conv" (fla (C, 1, W), gla_np (W, C)).
    ``fuse_norm`` False names the output norm ``g_norm`` (fla's unfused layer) instead of
    ``g_norm_swish_gate``."""
    o_norm = "g_norm_swish_gate" if fuse_norm else "g_norm"
    rows = {"model.embeddings.weight": (lm.EMBEDDING, "")}
    for i in range(config.num_layers):
        f, g = f"model.layers.{i}.", f"blocks.{i}."
        rows[f + "attn_norm.weight"] = (g + "attn.norm.w", "")
        for n in "qkv":
            rows[f + f"attn.{n}_proj.weight"] = (g + f"attn.W_{n}", "T")
        if config.use_short_conv:
            for n in "qkv":
                rows[f + f"attn.{n}_conv1d.weight"] = (g + f"attn.conv_{n}", "conv")
        rows.update({f + "attn.gk_proj.0.weight": (g + "attn.gate.W1", "T"),
                     f + "attn.gk_proj.1.weight": (g + "attn.gate.W2", "T"),
                     f + "attn.gk_proj.1.bias": (g + "attn.gate.b2", ""),
                     f + "attn.g_proj.weight": (g + "attn.W_r", "T"),
                     f + f"attn.{o_norm}.weight": (g + "attn.o_norm.w", ""),
                     f + "attn.o_proj.weight": (g + "attn.W_o", "T"),
                     f + "mlp_norm.weight": (g + "ffn.norm.w", ""),
                     f + "mlp.gate_proj.weight": (g + "ffn.W_gate", "T"),
                     f + "mlp.up_proj.weight": (g + "ffn.W_up", "T"),
                     f + "mlp.down_proj.weight": (g + "ffn.W_down", "T")})
    rows["model.norm.weight"] = ("final_norm.w", "")
    if not config.tie_word_embeddings:
        rows["lm_head.weight"] = (lm.HEAD, "T")
    return rows


def _to_fla_layout(a, layout):
    if layout == "T":
        return a.T
    if layout == "conv":
        return a.T[:, None, :]  # (W, C) -> (C, 1, W)
    return a


def _fla_shape(shape, layout):
    """The shape ``_to_fla_layout`` gives an array of ``shape``, computed without one."""
    if layout == "T":
        return tuple(reversed(shape))
    if layout == "conv":
        return (shape[1], 1, shape[0])  # (W, C) -> (C, 1, W)
    return tuple(shape)


def _from_fla_layout(a, layout):
    if layout == "T":
        return a.T
    if layout == "conv":
        return a[:, 0, :].T  # (C, 1, W) -> (W, C)
    return a


def param_shapes(config, vocab_size):
    """gla_np's token-model parameter shapes, in ``lm.init_params`` order."""
    D = config.hidden_size
    shapes = {lm.EMBEDDING: (vocab_size, D), **model.param_shapes(config)}
    if not config.tie_word_embeddings:
        shapes[lm.HEAD] = (D, vocab_size)
    return shapes


def to_fla(params, config, fuse_norm=True):
    """gla_np params (or gradients, same names) -> ``{fla name: array in fla's layout}``."""
    return {fla_name: np.ascontiguousarray(_to_fla_layout(params[name], layout))
            for fla_name, (name, layout) in names(config, fuse_norm).items()}


def from_fla(tensors, config, fuse_norm=True):
    """The inverse of ``to_fla``: fla-named tensors -> gla_np params, in gla_np's order."""
    return {name: np.ascontiguousarray(_from_fla_layout(tensors[fla_name], layout))
            for fla_name, (name, layout) in names(config, fuse_norm).items()}


def _read_json(path):
    """The JSON document in file ``path`` (a regular file, at most ``MAX_JSON_BYTES``)."""
    if not os.path.lexists(path):
        raise ValueError(f"{path}: missing (expected an fla checkpoint folder)")
    return parse_json(read_text(path, path, MAX_JSON_BYTES), path)


def _weight_files(folder):
    """``{file path: names the index assigns to it, or None}`` for a single or sharded folder."""
    single = os.path.join(folder, WEIGHTS)
    if os.path.lexists(single):  # (not isfile: a FIFO or a folder is refused when read)
        return {single: None}
    index = os.path.join(folder, INDEX)
    if not os.path.lexists(index):
        raise ValueError(f"{folder}: expected {WEIGHTS} or {INDEX}, found neither")
    document = _read_json(index)
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: expected a 'weight_map' object")
    files = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or os.path.basename(shard) != shard or shard in ("", ".."):
            raise ValueError(f"{index}: tensor {name!r} maps to {shard!r}, not a file name in "
                             f"the folder")
        files.setdefault(os.path.join(folder, shard), set()).add(name)
    return files


def _read_headers(folder):
    """Every tensor's (file, header entry, data start), checked; a name listed twice is refused."""
    found = {}
    for path, listed in _weight_files(folder).items():
        if not os.path.lexists(path):
            raise ValueError(f"{path}: missing (listed in {INDEX})")
        entries, start = _safetensors.read_header(path)
        if listed is not None and set(entries) != listed:
            odd = sorted(set(entries) ^ listed)
            raise ValueError(f"{path}: tensors {odd} disagree with {INDEX} (in one, not both)")
        for name, entry in entries.items():
            if name in found:
                raise ValueError(f"{path}: tensor {name!r} is also in {found[name][0]}")
            found[name] = (path, entry, start)
    return found


def load(path, dtype="float64"):
    """``(config, params)`` from an fla GLA checkpoint folder; ``lm.forward(params, ids, config)``
    then gives fla's logits. Tensors stored as F32, F16, BF16 or F64 are read into ``dtype``
    ("float64" or "float32"). Everything is checked before any array is returned: a refused
    config key or value, a missing, extra or mis-shaped tensor, a weight that is nan or inf, a
    truncated file, a header that lies about its sizes, a file that is not a regular file, is a
    ValueError naming it (the module docstring says what a hostile folder can and cannot do)."""
    folder = os.fspath(path)
    config, vocab, fuse_norm = config_from_fla(_read_json(os.path.join(folder, CONFIG)), dtype)
    found = _read_headers(folder)
    if config.num_layers > len(found):  # each layer has 14 tensors or more
        raise ValueError(f"{folder}: config.json says num_hidden_layers="
                         f"{config.num_layers}, but the folder holds {len(found)} tensors")
    table = names(config, fuse_norm)
    shapes = param_shapes(config, vocab)
    tied_head = config.tie_word_embeddings and "lm_head.weight" in found
    missing = sorted(set(table) - set(found))
    extra = sorted(set(found) - set(table) - ({"lm_head.weight"} if tied_head else set()))
    if missing or extra:
        raise ValueError(f"{folder}: tensors do not match the config: missing {missing}, "
                         f"extra {extra}")
    for fla_name, (name, layout) in table.items():
        want = _fla_shape(shapes[name], layout)  # sizes compared before anything is allocated
        if found[fla_name][1][1] != want:
            raise ValueError(f"{folder}: tensor {fla_name!r} has shape "
                             f"{list(found[fla_name][1][1])}, expected {list(want)}")
    if tied_head and found["lm_head.weight"][1][1] != found["model.embeddings.weight"][1][1]:
        raise ValueError(f"{folder}: tensor 'lm_head.weight' has another shape than the "
                         f"embedding it is tied to")
    tensors = {}
    wanted = list(table) + (["lm_head.weight"] if tied_head else [])
    for file in dict.fromkeys(found[n][0] for n in wanted):
        in_file = [n for n in wanted if found[n][0] == file]
        entries = {n: found[n][1] for n in in_file}
        tensors.update(_safetensors.read_tensors(file, entries, found[in_file[0]][2], in_file,
                                                 np.dtype(config.dtype)))
    bad = next((name for name, t in tensors.items() if not np.isfinite(t).all()), None)
    if bad is not None:
        raise ValueError(f"{folder}: tensor {bad!r} holds nan or inf")
    if tied_head and not np.array_equal(tensors["lm_head.weight"],
                                        tensors["model.embeddings.weight"]):
        raise ValueError(f"{folder}: tie_word_embeddings is true but 'lm_head.weight' differs "
                         f"from 'model.embeddings.weight'")
    return config, from_fla(tensors, config, fuse_norm)


def config_to_fla(config, vocab_size):
    """fla's config.json for ``config``: every GLAConfig key fla reads, with our values.
    ValueError naming the option where fla's model cannot express ``config``."""
    D, (H, K, V) = config.hidden_size, gla_layer.head_sizes(config)
    wrong = {"embed_dim": (config.embed_dim, D), "gate": (config.gate, "vector"),
             "gate_rank": (config.gate_rank, GATE_RANK),
             "gate_normalizer": (config.gate_normalizer, GATE_NORMALIZER),
             "norm": (config.norm, "rmsnorm"),
             "o_norm_eps": (gla_layer.output_norm_eps(config), config.norm_eps)}
    for option, (value, want) in wrong.items():
        if value != want:
            raise ValueError(f"config: {option}={value!r} cannot be expressed in fla's GLA "
                             f"model, which has {option}={want!r}")
    expand = {}
    for key, width in (("expand_k", H * K), ("expand_v", H * V)):
        ratio = width / D
        if int(D * ratio) != width:  # fla computes int(hidden_size * expand); make it exact
            ratio = math.nextafter(ratio, math.inf)
        if int(D * ratio) != width:
            raise ValueError(f"config: a {key} giving {width} from hidden_size={D} is not "
                             f"representable")
        expand[key] = ratio
    out = {**DEFAULTS, "architectures": ["GLAForCausalLM"], "model_type": "gla",
           "hidden_size": D, "num_hidden_layers": config.num_layers, "num_heads": H, **expand,
           "hidden_ratio": 4, "intermediate_size": ffn.ffn_size(config),
           "use_short_conv": config.use_short_conv, "conv_size": config.conv_size,
           "norm_eps": config.norm_eps, "tie_word_embeddings": config.tie_word_embeddings,
           "vocab_size": vocab_size, "fuse_norm": True, "dtype": "float32"}
    return dict(sorted(out.items()))


def save(path, config, params):
    """Write ``config.json`` and ``model.safetensors`` (float32, fla's names and layouts) into
    the folder ``path`` (made if missing), each file atomically. fla's
    ``GLAForCausalLM.from_pretrained(path)`` loads the result; ``load`` gives back ``params``
    (rounded to float32). ``params`` must be exactly the token model's (``lm.init_params``)."""
    if not isinstance(config, GLAConfig):
        raise ValueError(f"config: expected a GLAConfig, got {type(config).__name__}")
    if not isinstance(params, dict) or lm.EMBEDDING not in params:
        raise ValueError(f"params: expected the token model's dict, with {lm.EMBEDDING!r}")
    vocab = np.shape(params[lm.EMBEDDING])[0]
    fla_config = config_to_fla(config, vocab)
    shapes = param_shapes(config, vocab)
    if set(params) != set(shapes):
        raise ValueError(f"params: expected exactly the names of the config's token model; "
                         f"missing {sorted(set(shapes) - set(params))}, extra "
                         f"{sorted(set(params) - set(shapes))}")
    for name, shape in shapes.items():
        if np.shape(params[name]) != shape:
            raise ValueError(f"params[{name!r}]: expected shape {shape}, got "
                             f"{np.shape(params[name])}")
    tensors = {k: np.asarray(v).astype(np.float32) for k, v in to_fla(params, config).items()}
    folder = os.fspath(path)
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(os.path.join(folder, INDEX)):
        raise ValueError(f"{folder}: holds a sharded checkpoint ({INDEX}); save into an empty "
                         f"folder")
    _safetensors.write(os.path.join(folder, WEIGHTS), tensors, {"format": "pt"})
    text = json.dumps(fla_config, indent=2) + "\n"
    write_atomic(os.path.join(folder, CONFIG), lambda f: f.write(text.encode("utf-8")))
