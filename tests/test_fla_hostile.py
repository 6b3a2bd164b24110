"""Hostile fla folders: every config value is checked by name, every file must be a regular
file of bounded size with JSON nested no deeper than a config needs, every size is checked
against the tensors declared and the bytes stored before anything is allocated, and a weight
that is nan or inf is refused naming its tensor. Symbolic links are followed (the Hugging Face
cache is made of them); what they lead to is checked like any file."""

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gla_np import fla
from gla_np.training import data_parallel

DATA = Path(__file__).resolve().parent / "data"
TINY = DATA / "fla-gla-tiny"
ROOT = str(Path(__file__).resolve().parent.parent)
LIMIT = 3 * 2 ** 30


@pytest.fixture
def folder(tmp_path):
    out = tmp_path / "ckpt"
    shutil.copytree(TINY, out)
    for name in os.listdir(out):
        os.chmod(out / name, 0o644)
    return out


def _config(folder, **change):
    config = json.loads((folder / "config.json").read_text())
    config.update(change)
    (folder / "config.json").write_text(json.dumps(config))


def _header(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write(path, header, data, text=None):
    text = json.dumps(header).encode() if text is None else text
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


BAD_VALUES = [
    ("num_heads", "2", "expected an integer in [1, 2147483647]"),
    ("num_heads", 0, "expected an integer"), ("num_heads", True, "expected an integer"),
    ("hidden_size", 64.0, "expected an integer"), ("conv_size", -1, "expected an integer"),
    ("expand_k", 1e308, "gives a key width of inf"),
    ("expand_k", float("nan"), "expected a finite number > 0"),
    ("expand_v", "1", "expected a finite number > 0"), ("expand_v", 0, "expected a finite"),
    ("vocab_size", 10 ** 12, "expected an integer in [1, 2147483647]"),
    ("hidden_ratio", -2, "expected a finite number > 0 or null"),
    ("intermediate_size", 1.5, "expected an integer in [1, 2147483647] or null"),
    ("norm_eps", "1e-6", "expected a finite number > 0"),
    ("use_short_conv", 1, "expected true or false"), ("fuse_norm", "yes", "expected true or"),
    ("tie_word_embeddings", None, "expected true or false"),
]


@pytest.mark.parametrize("key, value, message", BAD_VALUES,
                         ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_every_config_value_is_checked_by_name(folder, key, value, message):
    """Regression: "num_heads": "2" raised TypeError, 0 ZeroDivisionError, expand_k 1e308
    OverflowError, NaN "cannot convert float NaN to integer"."""
    _config(folder, **{key: value})
    with pytest.raises(ValueError) as err:
        fla.load(folder)
    assert str(err.value).startswith(f"config: {key}=") and message in str(err.value)


def test_a_huge_vocabulary_within_range_is_refused_by_the_tensor_shapes(folder):
    """Regression: vocab_size 10**12 tried to allocate 58 TiB to compute the expected shape;
    now the shapes are compared as numbers."""
    _config(folder, vocab_size=2 ** 31 - 1)
    with pytest.raises(ValueError, match=r"'model.embeddings.weight' has shape \[256, 64\], "
                                         r"expected \[2147483647, 64\]"):
        fla.load(folder)


def test_a_huge_layer_count_is_refused_under_a_memory_limit(folder):
    """Regression: num_hidden_layers 10**9 built a 2.8 GB name table, then MemoryError."""
    _config(folder, num_hidden_layers=10 ** 9)
    code = ("import sys; from gla_np import fla\n"
            "try:\n    fla.load(sys.argv[1])\n"
            "except ValueError as err:\n    sys.exit(f'refused: {err}')\n")
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, **data_parallel.PROCESS_ENV, "PYTHONPATH": ROOT},
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS,
                                                                (LIMIT, LIMIT)))
    assert done.stderr == (f"refused: {folder}: config.json says num_hidden_layers=1000000000, "
                           f"but the folder holds 37 tensors\n")


def test_a_header_dtype_that_is_a_list_is_refused(folder):
    """Regression: "dtype": ["F32"] raised "unhashable type"."""
    path = folder / "model.safetensors"
    header, data = _header(path)
    header["model.norm.weight"]["dtype"] = ["F32"]
    _write(path, header, data)
    with pytest.raises(ValueError, match=r"tensor 'model.norm.weight': dtype \"\['F32'\]\" is "
                                         r"not one of"):
        fla.load(folder)


def test_an_index_that_is_a_list_is_refused(folder):
    """Regression: an index JSON holding a list raised AttributeError."""
    os.rename(folder / "model.safetensors", folder / "model-1.safetensors")
    (folder / "model.safetensors.index.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"index.json: expected a 'weight_map' object"):
        fla.load(folder)


@pytest.mark.parametrize("where", ["config", "header", "index"])
def test_deeply_nested_json_is_refused(folder, where):
    """Regression: JSON nested 100,000 deep raised RecursionError."""
    deep = "[" * 100_000 + "]" * 100_000
    if where == "config":
        (folder / "config.json").write_text(deep)
    elif where == "header":
        _, data = _header(folder / "model.safetensors")
        _write(folder / "model.safetensors", None, data, text=f'{{"a": {deep}}}'.encode())
    else:
        os.rename(folder / "model.safetensors", folder / "model-1.safetensors")
        (folder / "model.safetensors.index.json").write_text(deep)
    with pytest.raises(ValueError, match="JSON nested deeper than 32 levels$"):
        fla.load(folder)


def test_a_config_that_is_a_folder_is_refused(folder):
    """Regression: config.json being a folder raised IsADirectoryError."""
    os.remove(folder / "config.json")
    (folder / "config.json").mkdir()
    with pytest.raises(ValueError, match=r"config.json: is a folder, expected a regular file$"):
        fla.load(folder)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_a_fifo_is_refused_without_waiting(folder, name):
    """Regression: a FIFO as config.json hung (in a subprocess here, so that the old hang
    would fail by its timeout instead of stopping the suite)."""
    os.remove(folder / name)
    os.mkfifo(folder / name)
    code = ("import sys; from gla_np import fla\n"
            "try:\n    fla.load(sys.argv[1])\n"
            "except ValueError as err:\n    sys.exit(f'refused: {err}')\n")
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.stderr == f"refused: {folder / name}: is a FIFO, expected a regular file\n"


def test_an_oversized_config_is_refused_before_it_is_read_whole(folder):
    (folder / "config.json").write_text(" " * (fla.MAX_JSON_BYTES + 1))
    with pytest.raises(ValueError, match=r"config.json: larger than 16,777,216 bytes"):
        fla.load(folder)


def test_a_nan_weight_is_refused_naming_its_tensor(folder):
    """Regression: a NaN weight was reported later as "W: contains nan or inf", unnamed."""
    path = folder / "model.safetensors"
    header, data = _header(path)
    begin = header["model.layers.1.attn.q_proj.weight"]["data_offsets"][0]
    data = data[:begin] + np.float32(np.nan).tobytes() + data[begin + 4:]
    _write(path, header, data)
    with pytest.raises(ValueError, match=r"tensor 'model.layers.1.attn.q_proj.weight' holds "
                                         r"nan or inf$"):
        fla.load(folder)


def test_links_are_followed_and_what_they_name_is_checked(folder, tmp_path):
    """The decision on symbolic links (docs/reliability.md): followed, as the Hugging Face
    cache needs, and the file they lead to checked as any other. A shard linked to a text file
    outside the folder is refused as a damaged safetensors file, its text not echoed."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for name in ("config.json", "model.safetensors"):  # the cache's layout: links to blobs
        os.rename(folder / name, blobs / name)
        os.symlink(blobs / name, folder / name)
    config, params = fla.load(folder)
    assert config.num_layers == 2 and len(params) == 37
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:secret:/root:/bin/sh\n")
    os.remove(folder / "model.safetensors")
    os.symlink(secret, folder / "model.safetensors")
    with pytest.raises(ValueError) as err:
        fla.load(folder)
    assert "header claims" in str(err.value) and "secret" not in str(err.value)
