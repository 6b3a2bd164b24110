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


# -- hostile input (issue 22's probe): each of these was a traceback or a wrong refusal ---------

def test_option_errors_are_one_line_and_a_tiny_temperature_is_greedy(text_run, capsys):
    for argv in (["--tokens", "nan"], ["--seed", "1.5"], ["--bogus"], ["--tokens"]):
        assert _refused([str(text_run), *argv], capsys).endswith("; see --help")
    logits = np.array([0.5, 3.0, -1.0, 2.9])
    with np.errstate(over="raise", invalid="raise"):  # no overflow warning either
        for t in (5e-324, 1e-320, 1e-300):  # logits / t overflowed to inf, inf - inf = nan
            assert sample.pick(logits, t, None, np.random.default_rng(0)) == 1
    with pytest.raises(ValueError, match="^logits: the model's logits are nan or inf"):
        sample.pick(np.array([0.0, np.inf]), 1.0, None, np.random.default_rng(0))


def _edited(text_run, tmp_path, name, *, config=None, extra=None, params=None):
    ck = train.checkpoint.load(text_run / "checkpoint.npz")
    path = tmp_path / name
    train.checkpoint.save(path, config={**ck.config, **(config or {})},
                          params={**ck.params, **(params or {})}, opt_state=ck.opt_state,
                          step=ck.step, extra={**ck.extra, **(extra or {})})
    return str(path)


def test_sampling_needs_the_checkpoint_only_not_the_training_text(text_run, tmp_path, capsys):
    gone = _edited(text_run, tmp_path, "moved.npz", config={"text": str(tmp_path / "gone.txt")})
    assert sample.main([gone, "--prompt", "the ", "--tokens", "5", "--seed", "3"]) == \
        sample.main([str(text_run), "--prompt", "the ", "--tokens", "5", "--seed", "3"])


def test_a_damaged_vocabulary_or_overflowing_weights_are_one_line(text_run, tmp_path, capsys):
    vocab = train.checkpoint.load(text_run / "checkpoint.npz").extra["vocab"]
    for bad in (vocab[0] * len(vocab), vocab[::-1], "\ud800" + vocab[1:]):
        path = _edited(text_run, tmp_path, "vocab.npz", extra={"vocab": bad})
        assert _refused([path], capsys).endswith(
            "extra['vocab']: expected distinct characters in order of code point, none a "
            "surrogate (a text file's characters, as training stores them); damaged or edited")
    W = train.checkpoint.load(text_run / "checkpoint.npz").params["head.weight"]
    path = _edited(text_run, tmp_path, "huge.npz", params={"head.weight": np.full_like(W, 3e38)})
    with pytest.raises(SystemExit) as exc:
        sample.main([path, "--prompt", "the ", "--tokens", "5"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err == (
        "\npython -m gla_np.sample: error: the model's activations overflow to nan or inf with "
        "this run's weights (largest weight: 'head.weight', up to 3e+38); it cannot write\n")


def test_an_output_that_fails_or_cannot_encode_is_one_line(text_run, tmp_path, capsys,
                                                            monkeypatch):
    import errno
    import io

    class Full:
        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    with pytest.raises(SystemExit) as exc:
        sample.main([str(text_run), "--prompt", "the ", "--tokens", "5"], out=Full())
    assert exc.value.code == 1 and capsys.readouterr().err == (
        "python -m gla_np.sample: error: cannot write the text (No space left on device)\n")
    monkeypatch.setattr(sys, "stdout", None)  # what Python makes of `>&-`
    assert _refused([str(text_run), "--tokens", "5"], capsys) == (
        "stdout: closed; the text is written there")
    # a console that cannot show every character (ASCII, cp1252): such a one is escaped
    vocab = train.checkpoint.load(text_run / "checkpoint.npz").extra["vocab"]
    accented = _edited(text_run, tmp_path, "accented.npz", extra={"vocab": vocab[:-1] + "é"})
    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", ascii_out)
    written = sample.main([accented, "--prompt", "é", "--tokens", "20", "--seed", "3"])
    ascii_out.flush()
    shown = "é" + written + "\n"
    assert ascii_out.buffer.getvalue().decode("ascii") == shown.replace("é", "\\xe9")


def test_ctrl_c_while_the_run_is_read_is_one_line(text_run, capsys, monkeypatch):
    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample, "load_run", interrupted)
    with pytest.raises(SystemExit) as exc:
        sample.main([str(text_run)])
    assert exc.value.code == 130
    assert capsys.readouterr().err == "\npython -m gla_np.sample: interrupted\n"


def test_a_prompt_too_long_for_memory_is_one_line(text_run, capsys, monkeypatch):
    # a 130,000-character prompt takes 1.4 GB in one chunked pass of the default model: under a
    # memory limit that was a MemoryError traceback from deep inside a layer
    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(sample.lm, "prefill", no_memory)
    with pytest.raises(SystemExit) as exc:
        sample.main([str(text_run), "--prompt", "the cat", "--tokens", "5"])
    assert exc.value.code == 1 and capsys.readouterr().err == (
        "\npython -m gla_np.sample: error: --prompt: not enough memory to read its 7 characters "
        "in one pass of the chunked form; give a shorter prompt\n")


def test_the_functions_refuse_bad_arguments_by_name():
    # each was a numpy message, a TypeError, or a silent wrong answer (a negative temperature
    # favoured the least likely characters; decode(-1) read the vocabulary's last character)
    config, params = _model()
    rng = np.random.default_rng(0)
    for kw, message in (
            ({"num_tokens": -3}, r"^num_tokens: expected an integer >= 0, got -3$"),
            ({"num_tokens": 2.5}, r"^num_tokens: expected an integer >= 0, got 2.5$"),
            ({"temperature": -1}, r"^temperature: expected a finite number >= 0 \(0: greedy\)"),
            ({"temperature": float("nan")}, r"^temperature: expected a finite number >= 0"),
            ({"temperature": None}, r"^temperature: expected a finite number >= 0"),
            ({"top_k": 0}, rf"^top_k: expected None or an integer in \[1, {V}\]"),
            ({"top_k": 2.5}, rf"^top_k: expected None or an integer in \[1, {V}\]"),
            ({"top_k": V + 1}, rf"^top_k: expected None or an integer in \[1, {V}\]")):
        args = {"num_tokens": 3, **kw}
        with pytest.raises(ValueError, match=message):
            sample.generate(params, config, [1, 2], args.pop("num_tokens"), rng=rng, **args)
    with pytest.raises(ValueError, match=r"^logits: expected a non-empty 1-d array"):
        sample.pick(np.zeros(0), 1.0, None, rng)
    with pytest.raises(ValueError, match=r"^ids: expected tokens in \[0, 3\), got -1$"):
        text.decode("abc", [0, -1])
    with pytest.raises(ValueError, match=r"^ids: expected tokens in \[0, 3\), got 3$"):
        text.decode("abc", [3])
    with pytest.raises(ValueError, match=r"^prompt: expected a string, got int$"):
        text.encode("abc", 5)
    assert len(sample.generate(params, config, [1, 2], 0, rng=rng)) == 0
