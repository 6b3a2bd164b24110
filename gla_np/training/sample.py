"""Write text with a trained text run, one character at a time: ``python -m gla_np.sample RUN``.

    logits, state = lm.prefill(params, prompt)       read the prompt: one chunked-form pass
    repeat N times:
        c             = pick(logits, temperature, top_k, rng)   the next character, seeded
        print c
        logits, state = lm.step(params, c, state)    one position of the recurrent form

The state is per layer the (H, K, V) matrix S of every head and, with short convolutions, the
last W - 1 inputs of each convolution: its size is fixed, so every new character costs the same
time and memory however long the text before it. A softmax-attention model keeps instead the
keys and values of every token so far (a cache that grows with the length), and a GLA that kept
no state would run the chunked form over the whole text again for every new character;
docs/generation.md measures both against the state (``benchmarks/generate.py``).

Reading the prompt step by step (``read_prompt(..., how="step")``) gives the same state as the
chunked pass, to rounding; the chunked pass is one batched computation instead of T small ones.
With ``temperature=0`` the pick is the most likely character (greedy), and the text equals what
``lm.forward`` over prompt + text predicts at every position (tests/test_sample.py).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import numbers
import os
import signal
import sys

import numpy as np

from gla_np.training import _train_checks, checkpoint, lm, text
from gla_np.training.train import CHECKPOINT, RUN_OPTIONS, _one_line, _Parser, model_config

READS = ("chunk", "step")


def read_prompt(params, ids, config, how="chunk"):
    """Run the model over the prompt ids int (T,): returns ``(logits (vocab,) at its last position,
    state after it)``. ``how``: "chunk", one pass of the chunked form (``lm.prefill``), or
    "step", one ``lm.step`` per token from ``lm.init_state``; both give the same state."""
    if how not in READS:
        raise ValueError(f"how: expected one of {list(READS)}, got {how!r}")
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"ids: expected a non-empty 1-d array of tokens, got shape {ids.shape}")
    if how == "chunk":
        logits, state = lm.prefill(params, ids[None], config)  # (1, vocab)
    else:
        state = lm.init_state(config, 1)
        for token in ids:
            logits, state = lm.step(params, np.array([token]), state, config)  # (1, vocab)
    return logits[0], state


def pick(logits, temperature, top_k, rng):
    """The next token from logits (vocab,): the most likely one when ``temperature`` is 0, else a
    draw from ``rng`` with probabilities softmax(logits / temperature) over the ``top_k`` most
    likely tokens (None: all of them)."""
    logits = np.asarray(logits, dtype=np.float64)  # (vocab,)
    if logits.ndim != 1 or logits.size == 0:
        raise ValueError(f"logits: expected a non-empty 1-d array (vocab,), got shape "
                         f"{logits.shape}")
    check_draw(temperature, top_k, logits.size)
    if not np.isfinite(logits).all():  # finite weights large enough to overflow the activations
        raise ValueError("logits: the model's logits are nan or inf (its weights overflow the "
                         "activations); no character can be picked")
    if temperature == 0:
        return int(np.argmax(logits))
    # the largest logit subtracted before dividing: z <= 0, so a tiny temperature (5e-324)
    # sends the others to -inf instead of the largest to inf (and inf - inf to nan)
    with np.errstate(over="ignore"):
        z = (logits - logits.max()) / temperature  # (vocab,), <= 0, 0 at the likeliest
    if top_k is not None and top_k < z.size:
        kth = np.partition(z, z.size - top_k)[z.size - top_k]  # the k-th largest
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z)  # (vocab,), <= 1, exactly 0 outside the top k, 1 at the likeliest
    return int(rng.choice(z.size, p=p / p.sum()))


def check_draw(temperature, top_k, vocab_size):
    """ValueError naming ``temperature`` (a finite number >= 0) or ``top_k`` (None or an
    integer in [1, vocab_size]) when it is not one: a negative temperature would silently
    favour the least likely characters."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature: expected a finite number >= 0 (0: greedy), got "
                         f"{temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral)
                              or not 1 <= top_k <= vocab_size):
        raise ValueError(f"top_k: expected None or an integer in [1, {vocab_size}] (the "
                         f"vocabulary size), got {top_k!r}")


def generate(params, config, prompt_ids, num_tokens, *, temperature=1.0, top_k=None, rng=None,
             on_token=None, how="chunk"):
    """``num_tokens`` new tokens after the prompt, int64 (num_tokens,); ``on_token(token)`` is
    called with each as soon as it is picked. ``rng`` (a np.random.Generator) is needed unless
    ``temperature`` is 0."""
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, numbers.Integral) \
            or num_tokens < 0:
        raise ValueError(f"num_tokens: expected an integer >= 0, got {num_tokens!r}")
    check_draw(temperature, top_k, params["embedding.weight"].shape[0])
    if temperature != 0 and not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected a np.random.Generator, got {type(rng).__name__}")
    logits, state = read_prompt(params, prompt_ids, config, how)
    out = []
    for i in range(num_tokens):
        token = pick(logits, temperature, top_k, rng)
        out.append(token)
        if on_token is not None:
            on_token(token)
        if i + 1 < num_tokens:  # the last token's successor is never asked for
            logits, state = lm.step(params, np.array([token]), state, config)
            logits = logits[0]  # (vocab,)
    return np.array(out, dtype=np.int64)


def load_run(path):
    """``(run, params, vocab)`` of the text run saved at ``path`` (a checkpoint file, or the
    run's folder holding one); ValueError, one line, for anything else."""
    if os.path.isdir(path):
        folder, path = path, os.path.join(path, CHECKPOINT)
        if not os.path.isfile(path):
            raise ValueError(f"RUN {folder}: holds no {CHECKPOINT}; expected the --out folder "
                             f"of a python -m gla_np.train run, or its checkpoint file")
    elif not os.path.exists(path):
        raise ValueError(f"RUN {path}: no such file or folder")
    elif not os.path.isfile(path):  # a FIFO or a device: checkpoint.load would say which
        raise ValueError(f"RUN {path}: not a regular file; expected the --out folder of a "
                         f"python -m gla_np.train run, or its checkpoint file")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # every .npz is a zip file
            raise ValueError(f"RUN {path}: not a checkpoint (python -m gla_np.train writes "
                             f"{CHECKPOINT}, a NumPy .npz file; this file is not one)")
    ck = checkpoint.load(path)
    ck.config.setdefault("text", "")  # runs saved before --task text existed
    # draw=False: the training text is not read (the vocabulary is stored with the run, and
    # the text may be gone or elsewhere on the machine sampling)
    run = _train_checks.check_stored_run(path, ck.config, RUN_OPTIONS, draw=False)
    if run["task"] != "text":
        raise ValueError(f"RUN {path}: a run of --task {run['task']}, which has no characters "
                         f"to write; python -m gla_np.sample writes with runs of --task text")
    vocab = ck.extra.get("vocab")
    if not isinstance(vocab, str) or len(vocab) != run["vocab_size"]:
        raise ValueError(f"checkpoint {path}: extra['vocab']: expected a string of "
                         f"config['vocab_size'] = {run['vocab_size']} characters, got "
                         f"{type(vocab).__name__}")
    if list(vocab) != sorted(set(vocab)) or any(0xD800 <= ord(c) < 0xE000 for c in vocab):
        raise ValueError(f"checkpoint {path}: extra['vocab']: expected distinct characters in "
                         f"order of code point, none a surrogate (a text file's characters, "
                         f"as training stores them); damaged or edited")
    config = model_config(run)
    like = lm.init_params(config, run["vocab_size"], np.random.default_rng(0))
    params = checkpoint.load(path, params_like=like).params  # names, shapes, dtypes checked
    return run, params, vocab


def build_parser():
    p = _Parser(
        prog="python -m gla_np.sample",
        description="Write text with a model trained by python -m gla_np.train --task text: "
                    "read the prompt, then one character at a time with the recurrent state.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("run", metavar="RUN", help="the run's --out folder, or its checkpoint.npz")
    a("--prompt", default="\n",
      help="text to start from, in characters of the run's vocabulary (default %(default)r)")
    a("--tokens", type=int, default=500, help="characters to write after the prompt")
    a("--temperature", type=float, default=1.0,
      help="divides the logits; 0 picks the most likely character every time (greedy)")
    a("--top_k", type=int, default=None, help="draw only among the k most likely characters")
    a("--seed", type=int, default=0, help="seed of the draws: the same seed writes the same text")
    return p


def _check_options(args, vocab_size):
    if args.tokens < 1:
        raise ValueError(f"--tokens: expected an integer >= 1, got {args.tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ValueError(f"--temperature: expected a number >= 0 (0: greedy), got "
                         f"{args.temperature}")
    if args.top_k is not None and not 1 <= args.top_k <= vocab_size:
        raise ValueError(f"--top_k: expected an integer in [1, {vocab_size}] (the run's "
                         f"vocabulary size), got {args.top_k}")
    if args.seed < 0:
        raise ValueError(f"--seed: expected an integer >= 0, got {args.seed}")
    if not args.prompt:
        raise ValueError("--prompt: expected at least one character (the model reads it to "
                         "get its first state), got ''")


def main(argv=None, out=None):
    """Parse the command line, print the prompt, then each new character as it is written.
    Returns the text written after the prompt. One-line errors exit with status 2; Ctrl-C
    (while the run is read or while writing) exits with 130, an output that fails (a closed pipe,
    a full disk) with 1, without a traceback.

    A character the output's encoding cannot show (a run trained on UTF-8 text, printed to an
    ASCII or cp1252 console) is written as a Python escape (``\\x85``) instead of stopping."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    out = sys.stdout if out is None else out
    try:
        try:
            if out is None:  # python -m gla_np.sample RUN >&- : Python sets sys.stdout to None
                raise ValueError("stdout: closed; the text is written there")
            run, params, vocab = load_run(args.run)
            _check_options(args, len(vocab))
            prompt = text.encode(vocab, args.prompt, name="--prompt")
        except ValueError as err:
            parser.exit(2, f"{parser.prog}: error: {_one_line(err)}\n")
        if out is sys.stdout and hasattr(out, "reconfigure"):
            out.reconfigure(errors="backslashreplace")

        def show(token):
            out.write(vocab[token])
            out.flush()

        try:
            out.write(args.prompt)
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below
                ids = generate(params, model_config(run), prompt, args.tokens,
                               temperature=args.temperature, top_k=args.top_k,
                               rng=np.random.default_rng(args.seed), on_token=show)
            out.write("\n")
            out.flush()
        except MemoryError:  # the prompt is read in one pass, whose memory grows with it
            parser.exit(1, f"\n{parser.prog}: error: --prompt: not enough memory to read its "
                           f"{len(prompt):,} characters in one pass of the chunked form; give "
                           f"a shorter prompt\n")
        except ValueError:  # finite weights so large that the activations overflow
            name = max(params, key=lambda n: float(np.abs(params[n]).max(initial=0)))
            top = float(np.abs(params[name]).max())
            parser.exit(1, f"\n{parser.prog}: error: the model's activations overflow to nan "
                           f"or inf with this run's weights (largest weight: {name!r}, up to "
                           f"{top:.3g}); it cannot write\n")
        except BrokenPipeError:  # the reader went away (say, | head): stop, no traceback
            _quiet_stdout()
            sys.exit(1)
        except OSError as err:  # a full disk, an output file that went away
            _quiet_stdout()
            parser.exit(1, f"{parser.prog}: error: cannot write the text "
                           f"({err.strerror or err})\n")
    except KeyboardInterrupt:  # Ctrl-C: stop, no traceback (and none from a second one)
        with contextlib.suppress(ValueError):  # (signal handlers: main thread only)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        parser.exit(130, f"\n{parser.prog}: interrupted\n")
    return text.decode(vocab, ids)


def _quiet_stdout():
    """Point stdout at /dev/null, so that the flush at exit cannot fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
