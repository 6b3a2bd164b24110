"""Generation (gla_np.training.sample, python -m gla_np.sample): the prompt's state read by the
chunked form equals the stepped one, greedy text is what lm.forward predicts, a seed repeats a
text, and what cannot be sampled is a one-line error."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gla_np.layers.model import GLAConfig
from gla_np.training import lm, sample, text, train

ROOT = str(Path(__file__).resolve().parent.parent)
PREFIX = "python -m gla_np.sample: error: "
V = 11


def _model(use_short_conv=True, dtype="float64", **kw):
    config = GLAConfig(embed_dim=8, hidden_size=8, num_layers=2, num_heads=2, head_dim=4,
                       dropout=0.0, chunk_size=4, use_short_conv=use_short_conv, dtype=dtype,
                       **kw)
    rng = np.random.default_rng(0)
    params = {n: (p + 0.5 * rng.standard_normal(p.shape)).astype(p.dtype)  # far from init
              for n, p in lm.init_params(config, V, rng).items()}
    return config, params


@pytest.mark.parametrize("use_short_conv", [True, False], ids=["conv", "no-conv"])
@pytest.mark.parametrize("T", [1, 4, 13])  # below, at and across chunk boundaries (C = 4)
def test_chunked_prompt_gives_the_stepped_state(use_short_conv, T):
    config, params = _model(use_short_conv, form="recurrent")  # prefill switches to chunk
    ids = np.random.default_rng(T).integers(0, V, T)
    logits_c, state_c = sample.read_prompt(params, ids, config, how="chunk")
    logits_s, state_s = sample.read_prompt(params, ids, config, how="step")
    np.testing.assert_allclose(logits_c, logits_s, rtol=1e-12, atol=1e-12)
    for layer_c, layer_s in zip(state_c, state_s, strict=True):
        np.testing.assert_allclose(layer_c.S, layer_s.S, rtol=1e-12, atol=1e-12)
        assert len(layer_c.conv) == len(layer_s.conv) == (3 if use_short_conv else 0)
        for a, b in zip(layer_c.conv, layer_s.conv):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    full, _ = lm.forward(params, ids[None], config)  # and the logits are the model's
    np.testing.assert_allclose(logits_c, full[0, -1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_greedy_text_is_the_argmax_of_the_full_forward(dtype):
    config, params = _model(dtype=dtype)
    prompt = np.array([3, 1, 4, 1, 5])
    new = sample.generate(params, config, prompt, 20, temperature=0)
    assert new.shape == (20,) and new.dtype == np.int64
    everything = np.concatenate([prompt, new])
    logits, _ = lm.forward(params, everything[None, :-1], config)  # (1, T - 1, V)
    np.testing.assert_array_equal(logits[0, len(prompt) - 1:].argmax(-1), new)


def test_a_seed_repeats_the_text_and_top_k_keeps_the_likeliest():
    config, params = _model()
    prompt = np.array([2, 7])

    def draw(seed, **kw):
        return sample.generate(params, config, prompt, 30, rng=np.random.default_rng(seed), **kw)

    np.testing.assert_array_equal(draw(1), draw(1))
    assert not np.array_equal(draw(1), draw(2))
    logits, _ = sample.read_prompt(params, prompt, config)
    top = set(np.argsort(logits)[-3:])
    rng = np.random.default_rng(0)
    assert {sample.pick(logits, 1.0, 3, rng) for _ in range(200)} == top
    assert sample.pick(logits, 0, None, rng) == int(np.argmax(logits))
    assert sample.pick(logits, 1.0, 1, rng) == int(np.argmax(logits))
    seen = []
    sample.generate(params, config, prompt, 5, rng=rng, on_token=seen.append)
    assert len(seen) == 5  # each token handed out as it is picked


# -- the command ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A run of a few steps on a small text (seconds); its folder."""
    folder = tmp_path_factory.mktemp("sample")
    corpus = folder / "t.txt"
    corpus.write_text("the cat sat on the mat. the dog sat on the log.\n" * 6)
    out = folder / "run"
    train.main(["--task", "text", "--text", str(corpus), "--seq_len", "8", "--batch_size", "4",
                "--hidden", "8", "--heads", "2", "--head_dim", "4", "--warmup", "1",
                "--eval_batches", "1", "--threads", "1", "--steps", "3", "--out", str(out)])
    return out


def test_the_command_prints_prompt_then_text_and_repeats_with_a_seed(text_run, capsys):
    written = sample.main([str(text_run), "--prompt", "the ", "--tokens", "40", "--seed", "3"])
    out = capsys.readouterr().out
    assert out == "the " + written + "\n" and len(written) == 40
    vocab = text.load(train.checkpoint.load(text_run / "checkpoint.npz").config["text"]).vocab
    assert set(written) <= set(vocab)
    again = sample.main([str(text_run / "checkpoint.npz"), "--prompt", "the ", "--tokens", "40",
                         "--seed", "3"])
    assert again == written
    greedy = sample.main([str(text_run), "--prompt", "the ", "--tokens", "10",
                          "--temperature", "0", "--seed", "9"])
    assert greedy == sample.main([str(text_run), "--prompt", "the ", "--tokens", "10",
                                  "--temperature", "0", "--seed", "1"])


def _refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        sample.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith(PREFIX), err
    return err[len(PREFIX):-1]


def test_what_cannot_be_sampled_is_a_one_line_error(text_run, tmp_path, capsys):
    run = str(text_run)
    assert _refused([run, "--prompt", "the ÿ"], capsys) == (
        "--prompt: the character 'ÿ' (U+00FF) at position 4 is not in the run's vocabulary of "
        "15 characters (those of its training text)")
    assert _refused([run, "--prompt", ""], capsys).startswith("--prompt: expected at least one")
    assert _refused([run, "--tokens", "0"], capsys) == "--tokens: expected an integer >= 1, got 0"
    assert _refused([run, "--temperature", "-1"], capsys).startswith("--temperature: expected")
    assert _refused([run, "--top_k", "16"], capsys) == (
        "--top_k: expected an integer in [1, 15] (the run's vocabulary size), got 16")
    assert _refused([str(tmp_path / "nope")], capsys) == (
        f"RUN {tmp_path / 'nope'}: no such file or folder")
    assert _refused([str(tmp_path)], capsys).startswith(f"RUN {tmp_path}: holds no checkpoint")
    for name, content in (("empty.npz", b""), ("binary.npz", b"\0\1\2 not a checkpoint"),
                          ("notes.txt", b"some text")):
        (tmp_path / name).write_bytes(content)
        assert _refused([str(tmp_path / name)], capsys).startswith(
            f"RUN {tmp_path / name}: not a checkpoint (python -m gla_np.train writes ")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes((text_run / "checkpoint.npz").read_bytes()[:300])
    assert "truncated or corrupt" in _refused([str(truncated)], capsys)
    mqar = tmp_path / "mqar"
    train.main(["--seq_len", "16", "--num_pairs", "2", "--vocab_size", "16", "--batch_size", "2",
                "--hidden", "8", "--heads", "2", "--head_dim", "4", "--warmup", "1",
                "--eval_batches", "1", "--threads", "1", "--steps", "1", "--out", str(mqar)])
    capsys.readouterr()
    assert _refused([str(mqar)], capsys) == (
        f"RUN {mqar / 'checkpoint.npz'}: a run of --task mqar, which has no characters to "
        f"write; python -m gla_np.sample writes with runs of --task text")


def test_python_m_gla_np_sample_runs(text_run):
    done = subprocess.run([sys.executable, "-m", "gla_np.sample", str(text_run), "--prompt", "t",
                           "--tokens", "5"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("t") and len(done.stdout) == 1 + 5 + 1


def test_the_generation_benchmark_prints_its_rows(tmp_path):
    out_csv = tmp_path / "g.csv"
    done = subprocess.run([sys.executable, str(Path(ROOT) / "benchmarks" / "generate.py"),
                           "--prefixes", "16", "32", "--steps", "2", "--repeats", "1",
                           "--hidden", "8", "--head_dim", "4", "--heads", "2", "--vocab", "7",
                           "--csv", str(out_csv)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    rows = out_csv.read_text().splitlines()
    assert rows[0].startswith("prefix,state_ms,rerun_ms,state_bytes,kv_cache_bytes")
    # the state: per head a 4 x 4 matrix, plus 3 convolution inputs of 3 x 8; float32
    state_bytes = (2 * 4 * 4 + 3 * 3 * 8) * 4
    for line, T in zip(rows[1:], (16, 32), strict=True):
        prefix, _, _, state, kv = line.split(",")[:5]
        assert (int(prefix), int(state), int(kv)) == (T, state_bytes, T * (8 + 8) * 4)


def test_ctrl_c_stops_writing_without_a_traceback(text_run, capsys):
    class Interrupted:  # a terminal whose user presses Ctrl-C after 10 characters
        written = ""

        def write(self, s):
            self.written += s
            if len(self.written) > 10:
                raise KeyboardInterrupt

        def flush(self):
            pass

    out = Interrupted()
    with pytest.raises(SystemExit) as exc:
        sample.main([str(text_run), "--prompt", "the ", "--tokens", "100"], out=out)
    assert exc.value.code == 130 and len(out.written) == 11
    assert capsys.readouterr().err == "\npython -m gla_np.sample: interrupted\n"
