"""Train a small GLA language model on a toy task: ``python -m gla_np.train --help``.

The loop, one step per batch:

    ids, targets = task(rng_data(step))                  fresh, seeded data every step
    loss, grads  = lm.loss_and_grads(params, ids, targets)
    grads, norm  = clip_by_global_norm(grads, clip)
    params, opt  = AdamW.step(params, grads, opt, warmup_cosine(step))

Every random number is drawn from a generator seeded by ``(seed, stream, index)``: stream 0 is
the training data of step ``index``, stream 1 the dropout masks of that step, stream 2 the
held-out batches, stream 3 the initial parameters. A step's data therefore depends only on the
seed and the step number, never on what ran before, and resuming from a checkpoint (which
stores the parameters, the optimizer state and the step) continues bit for bit as if the run
had never stopped. The held-out batches come from their own stream, so they are not training
batches.

The output folder gets ``checkpoint.npz`` (see gla_np.checkpoint) every ``save_every`` steps
and at the end, and ``metrics.csv`` (one row per logged step, and a last row with the held-out
loss and accuracy) at every logged step and before every checkpoint, so the CSV is never older
than the checkpoint. Both are written atomically. At the end the model is evaluated on
``eval_batches`` held-out batches. Ctrl-C (SIGINT) or SIGTERM saves the last finished step and
stops; a loss or gradient that is not finite stops the run and keeps the last good checkpoint.
One run writes into a folder at a time: the run holds the folder's lock (``_files.lock_folder``)
from before it checks the folder until it ends, and a second run is refused naming the first.
What is refused up front, before any step, is in gla_np.training._train_checks; docs/reliability.md
describes all of it from the user's side.

``--task text --text PATH`` trains on a UTF-8 file instead, one token per character
(gla_np.training.text): the vocabulary is the file's characters, stored with the run, and the
held-out batches are windows of the file's last 10 %; ``python -m gla_np.sample RUN`` writes
with the trained model.

The defaults train MQAR (T = 64, 8 key-value pairs, vocabulary 256) to >= 99 % held-out accuracy
on a 2-core CPU in under five minutes; docs/experiments.md has the measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import os
import shlex
import signal
import sys
import threading
import time
import warnings

import numpy as np

from gla_np import _files
from gla_np.layers.model import GLAConfig
from gla_np.ops import cross_entropy
from gla_np.training import _train_checks, checkpoint, data_parallel, lm, optim, tasks, text
from gla_np.training._train_checks import task_sizes

# The options that define a run (stored in the checkpoint; a resume must agree with them).
RUN_OPTIONS = ("task", "seq_len", "num_pairs", "num_tokens", "vocab_size", "steps", "batch_size",
               "lr", "min_lr", "warmup", "weight_decay", "clip", "form", "gate", "hidden",
               "layers", "heads", "head_dim", "expand", "short_conv", "dropout", "dtype", "seed",
               "eval_batches", "text")
STREAM_DATA, STREAM_DROPOUT, STREAM_EVAL, STREAM_INIT = 0, 1, 2, 3
CSV_FIELDS = ("step", "split", "loss", "accuracy", "lr", "grad_norm", "tokens_per_sec",
              "elapsed_sec")
# Options that shape the files or the last bits of the numbers (threads: the shards' rounding
# and, with dropout, their masks): saved with the run, reused on resume unless given again.
SESSION_SAVED = ("log_every", "save_every", "threads")
CHECKPOINT, METRICS = "checkpoint.npz", "metrics.csv"


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line, like every other refusal of the command (the usage
    block it would print is what --help is for)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {_one_line(message)}; see --help\n")


def _one_line(text):
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


def build_parser():
    """The command line; every option has help text and a default chosen by experiment."""
    p = _Parser(
        prog="python -m gla_np.train",
        description="Train a small GLA on a toy sequence task or a text file, evaluate it on "
                    "held-out data, "
                    "write a checkpoint and a metrics CSV.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--task", default="mqar", choices=sorted(tasks.TASKS), help="the toy task")
    a("--seq_len", type=int, default=64, help="sequence length T")
    a("--num_pairs", type=int, default=8,
      help="MQAR: key-value pairs per sequence; latest_recall: distinct keys per sequence")
    a("--num_tokens", type=int, default=8, help="copying tasks: tokens to copy per sequence")
    a("--vocab_size", type=int, default=256,
      help="vocabulary size (--task text: the file's number of distinct characters)")
    a("--text", default="", metavar="PATH",
      help="--task text: a UTF-8 text file; the first 90%% is trained on, the rest held out "
           "(default %(default)r: this Python's own pydoc_data/topics.py, the texts of help())")
    a("--steps", type=int, default=1000, help="training steps (one batch each)")
    a("--batch_size", type=int, default=64, help="sequences per batch")
    a("--lr", type=float, default=1.5e-3, help="peak learning rate (AdamW), at most 1")
    a("--min_lr", type=float, default=1.5e-4, help="learning rate at the end of the cosine decay")
    a("--warmup", type=int, default=50, help="linear warmup steps")
    a("--weight_decay", type=float, default=0.1,
      help="AdamW decoupled weight decay, applied to matrices only")
    a("--clip", type=float, default=1.0, help="clip gradients to this global norm")
    a("--form", default="chunk", choices=["chunk", "parallel", "recurrent"],
      help="form of the GLA recurrence used for training")
    a("--gate", default="vector", choices=["vector", "scalar", "fixed", "none"],
      help="forget gate variant")
    a("--hidden", type=int, default=64, help="model width (hidden_size = embed_dim)")
    a("--layers", type=int, default=1, help="number of GLA blocks")
    a("--heads", type=int, default=1, help="attention heads per layer")
    a("--head_dim", type=int, default=64, help="key/value dimension per head")
    a("--expand", type=int, default=2, help="feed-forward expansion factor")
    a("--short_conv", action=argparse.BooleanOptionalAction, default=True,
      help="short causal convolution on q, k, v (fla's use_short_conv)")
    a("--dropout", type=float, default=0.0, help="dropout rate")
    a("--dtype", default="float32", choices=["float32", "float64"], help="floating point type")
    a("--seed", type=int, default=0, help="seed of every random stream (init, data, dropout)")
    a("--eval_batches", type=int, default=16, help="held-out batches for the final evaluation")
    a("--out", default=os.path.join("runs", "latest"),
      help="output folder for checkpoint.npz and metrics.csv (with --resume: default the "
           "checkpoint's own folder)")
    a("--resume", default=None, metavar="CHECKPOINT",
      help="continue the run saved in this checkpoint (its options are reused; an option "
           "given here must agree with it)")
    a("--overwrite", action="store_true",
      help="start afresh in an --out folder that holds another run's checkpoint, deleting it")
    a("--stop_after", type=int, default=None,
      help="stop after this many steps in total and save a checkpoint, as if interrupted "
           "(continue later with --resume); no held-out evaluation")
    a("--save_every", type=int, default=250,
      help="save a checkpoint every this many steps (and always at the end and on Ctrl-C)")
    a("--log_every", type=int, default=25, help="print a progress line every this many steps")
    a("--threads", type=int, default=None,
      help="threads per training step, each running a shard of the batch (gla_np."
           "data_parallel); default: every core. BLAS itself runs one thread per shard")
    return p


def model_config(run):
    """The GLAConfig of a run dict."""
    return GLAConfig(embed_dim=run["hidden"], hidden_size=run["hidden"], num_layers=run["layers"],
                     num_heads=run["heads"], head_dim=run["head_dim"],
                     expand_factor=run["expand"], dropout=run["dropout"], seq_len=run["seq_len"],
                     gate=run["gate"], form=run["form"], use_short_conv=run["short_conv"],
                     dtype=run["dtype"])


def _rng(run, stream, index):
    return np.random.default_rng([run["seed"], stream, index])


def batch(run, stream, index):
    """The batch number ``index`` of a random stream (training data or held-out data)."""
    sizes = task_sizes(run)
    if run["task"] == "text":  # held-out windows from the file's last 10 %
        sizes["split"] = "heldout" if stream == STREAM_EVAL else "train"
    return tasks.make_batch(run["task"], _rng(run, stream, index), run["batch_size"], **sizes)


def _format_time(seconds):
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s"


def evaluate(params, run, num_batches, should_stop=None):
    """Held-out (loss, accuracy) over ``num_batches`` batches of the evaluation stream, or None
    when ``should_stop()`` asks to stop between two batches."""
    config = model_config(run)
    losses, correct, counted = [], 0, 0
    for i in range(num_batches):
        if should_stop is not None and should_stop():
            return None
        ids, targets = batch(run, STREAM_EVAL, i)
        logits, _ = lm.forward(params, ids, config)
        loss, _ = cross_entropy.forward(logits, targets)
        mask = targets != tasks.IGNORE
        losses.append(float(loss))
        correct += int((logits.argmax(-1)[mask] == targets[mask]).sum())
        counted += int(mask.sum())
    return float(np.mean(losses)), correct / counted


# -- the output folder -----------------------------------------------------------------------

class RunStopped(Exception):
    """The run stopped before its end: interrupted, diverged, out of memory, or a save failed.

    ``str(err)`` is the one-line message for the user; ``status`` the exit status the command
    uses (128 + the signal number for a signal, 1 otherwise).
    """

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


class RunFolder:
    """The files of a run in ``out``; remembers the last checkpoint that holds good state.

    ``guard`` is the context manager each file is written in (``_Stops.held`` in the command:
    a signal waits until the file is written, then abandons the save; see ``_Stops``).
    """

    def __init__(self, out, run, session, guard=contextlib.nullcontext):
        self.run, self.session, self.guard = run, session, guard
        self.checkpoint = os.path.join(out, CHECKPOINT)
        self.metrics = os.path.join(out, METRICS)
        self.good = None  # (path, step) of the last checkpoint written or resumed from

    def write_metrics(self, history, step):
        """metrics.csv from ``history``, atomically, after ``step`` steps (the step a failure
        names); nothing while there are no rows."""
        if not history:
            return
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(CSV_FIELDS)
        writer.writerows(history)

        def write(f):
            with self.guard():
                f.write(text.getvalue().encode())

        try:
            checkpoint.write_atomic(self.metrics, write)
        except OSError as err:
            raise RunStopped(f"could not write {self.metrics} at step {step} "
                             f"({err.strerror or err}); {self.kept()}") from None

    def save(self, params, opt_state, step, history, elapsed):
        """The CSV, then the checkpoint: a kill between the two leaves the CSV newer, never
        older, and a resume rewrites it from the checkpoint's own history."""
        self.write_metrics(history, step)
        try:
            checkpoint.save(self.checkpoint, config=self.run, params=params,
                            opt_state=opt_state, step=step,
                            extra={"history": history, "elapsed_sec": elapsed,
                                   **self.session, **text.stored(self.run)},
                            guard=self.guard)
        except OSError as err:
            raise RunStopped(f"could not save {self.checkpoint} at step {step} "
                             f"({err.strerror or err}); {self.kept()}") from None
        self.good = (self.checkpoint, step)

    def saved_at(self, step):
        return self.good is not None and self.good[1] == step and self.good[0] == self.checkpoint

    def kept(self):
        if self.good is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint {self.good[0]} (step {self.good[1]}) is kept"


def resume_command(path):
    return f"python -m gla_np.train --resume {shlex.quote(path)}"


def _load_resume(path, run, params, opt_state):
    """The state saved in checkpoint ``path``, checked against this run's shapes; every stored
    value the loop will use is checked here, so a damaged one is refused now, by name, and not
    met later as a TypeError or as a false divergence."""
    ck = checkpoint.load(path, config=run, params_like=params, opt_state_like=opt_state)
    where = f"checkpoint {path}"
    if ck.step > run["steps"]:
        raise ValueError(f"{where}: step {ck.step} is beyond config['steps'] = {run['steps']}")
    if int(ck.opt_state["step"]) != ck.step:
        raise ValueError(f"{where}: entry 'opt/step' is {int(ck.opt_state['step'])}, expected "
                         f"the checkpoint's step {ck.step}")
    bad = _first_nonfinite(ck.params)
    if bad is not None:
        raise ValueError(f"{where}: entry 'param/{bad}' holds nan or inf")
    bad = _first_nonfinite(ck.opt_state)
    if bad is not None:
        raise ValueError(f"{where}: entry 'opt/{bad}' holds nan or inf")
    negative = next((key for key, a in ck.opt_state.items()
                     if key.startswith("v/") and (a < 0).any()), None)
    if negative is not None:
        raise ValueError(f"{where}: entry 'opt/{negative}' holds negative values; AdamW's "
                         f"second moment is an average of squares, >= 0")
    text.check_stored(where, run, ck.extra)
    history = ck.extra.get("history", [])
    if not isinstance(history, list):
        raise ValueError(f"{where}: extra['history']: expected a list of rows of "
                         f"{len(CSV_FIELDS)} values ({', '.join(CSV_FIELDS)})")
    for i, row in enumerate(history):
        problem = _history_row_problem(row)
        if problem:
            raise ValueError(f"{where}: extra['history'][{i}]: {problem}")
    elapsed = ck.extra.get("elapsed_sec", 0.0)
    if not _is_number(elapsed) or not elapsed >= 0:
        raise ValueError(f"{where}: extra['elapsed_sec']: expected a number >= 0, got "
                         f"{_short(elapsed)}")
    # rows past the checkpoint's step come from a CSV written after it: drop them
    history = [row for row in history if row[0] <= ck.step]
    return ck.params, ck.opt_state, ck.step, history, float(elapsed)


def _history_row_problem(row):
    """What is wrong with a stored metrics row, or "" if nothing. A training row holds numbers
    only; a held-out row its loss and accuracy, the per-step columns empty."""
    if not isinstance(row, list) or len(row) != len(CSV_FIELDS):
        return (f"expected a row of {len(CSV_FIELDS)} values ({', '.join(CSV_FIELDS)}), got "
                f"{_short(row)}")
    values = dict(zip(CSV_FIELDS, row))
    if not _is_int(values["step"]) or values["step"] < 0:
        return f"step: expected an integer >= 0, got {_short(values['step'])}"
    if values["split"] not in ("train", "heldout"):
        return f"split: expected 'train' or 'heldout', got {_short(values['split'])}"
    blank = ("lr", "grad_norm", "tokens_per_sec") if values["split"] == "heldout" else ()
    for name in CSV_FIELDS[2:]:
        value = values[name]
        if name in blank:
            if value != "":
                return f"{name}: expected '' in a held-out row, got {_short(value)}"
        elif not _is_number(value) or not math.isfinite(value) or value < 0:
            return f"{name}: expected a finite number >= 0, got {_short(value)}"
    if values["accuracy"] > 1:
        return f"accuracy: expected a number in [0, 1], got {values['accuracy']!r}"
    return ""


def _short(value):
    """``repr(value)``, cut to what a one-line message can carry."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _first_nonfinite(arrays):
    return next((name for name, a in arrays.items() if not np.isfinite(a).all()), None)


def _diverged(run, step, what, folder):
    return RunStopped(f"diverged at step {step + 1} of {run['steps']}: {what}; "
                      f"{folder.kept()}. Try a lower learning rate in a new run, say --lr "
                      f"{run['lr'] / 10:g} (this run: {run['lr']:g}; --overwrite replaces it)")


def _heldout_row(history, step):
    return next((row for row in history if row[0] == step and row[1] == "heldout"), None)


# -- the loop --------------------------------------------------------------------------------

def _print(line):
    print(line, flush=True)


def train(run, *, out, resume=None, stop_after=None, log_every=25, save_every=250,
          threads=None, log=_print, should_stop=None, folder_lock=None):
    """Run (or continue) training; returns a dict with the params, metrics and timings.

    ``threads`` shards each step's batch over that many threads (None: every core); the shards'
    gradients are combined exactly (gla_np.data_parallel), so it changes speed and rounding
    only (and, with dropout, the masks drawn).

    ``should_stop()`` (checked before every step and between held-out batches) returns a
    signal number to stop at, or None; ``main`` wires it to SIGINT and SIGTERM. Raises
    RunStopped when the run stops early (interrupted, diverged, a failed save), after saving
    what can be saved.

    Only one run writes into a folder at a time: ``folder_lock`` is the lock of ``out`` held by
    the caller (``main`` takes it before it checks the folder); without one, ``train`` takes it
    here and releases it when it returns (gla_np._files).
    """
    _train_checks.check_run(run)
    threads = data_parallel.default_threads() if threads is None else threads
    _train_checks.check_session({"log_every": log_every, "save_every": save_every,
                                 "stop_after": stop_after, "threads": threads})
    _train_checks.check_history(run, log_every, label=lambda name: name)
    if not isinstance(out, (str, os.PathLike)) or not os.fspath(out):
        raise ValueError(f"out: expected a folder name, got {out!r}")
    out = os.fspath(out)
    if folder_lock is None:
        with _files.lock_folder(out, label="out") as folder_lock:
            return train(run, out=out, resume=resume, stop_after=stop_after,
                         log_every=log_every, save_every=save_every, threads=threads, log=log,
                         should_stop=should_stop, folder_lock=folder_lock)
    if not folder_lock.held or not _same_file(folder_lock.folder, out):
        raise ValueError(f"folder_lock: expected the held lock of {out!r}")
    config = model_config(run)
    opt = optim.AdamW(weight_decay=run["weight_decay"])
    params = lm.init_params(config, run["vocab_size"], _rng(run, STREAM_INIT, 0))
    opt_state = opt.init(params)
    # main's should_stop holds its signals back while a file's contents are written
    guard = should_stop.held if isinstance(should_stop, _Stops) else contextlib.nullcontext
    folder = RunFolder(out, run, {"log_every": log_every, "save_every": save_every,
                                  "threads": threads}, guard)
    start, history, elapsed_before = 0, [], 0.0
    if resume is not None:
        params, opt_state, start, history, elapsed_before = _load_resume(
            resume, run, params, opt_state)
        folder.good = (folder.checkpoint if _same_file(resume, folder.checkpoint) else resume,
                       start)
        log(f"resumed from {resume} at step {start}")
    stop = run["steps"] if stop_after is None else min(stop_after, run["steps"])
    if stop < start:
        raise ValueError(f"--stop_after: expected >= {start}, the step the checkpoint is at, "
                         f"got {stop_after}")
    os.makedirs(out, exist_ok=True)
    folder.write_metrics(history, start)  # on resume: the CSV matches the checkpoint again
    if resume is not None and not history and folder.saved_at(start):
        with contextlib.suppress(FileNotFoundError):  # it can only hold rows past the checkpoint
            os.unlink(folder.metrics)
    should_stop = should_stop or (lambda: None)
    if start < stop:
        log(f"training {run['task']} with {sum(p.size for p in params.values()):,} parameters "
            f"({config.num_layers} layers, hidden {config.hidden_size}, gate {config.gate}, "
            f"form {config.form}, {config.dtype}) for steps {start}..{stop} of {run['steps']}")

    t0 = time.perf_counter()
    window_t, window_steps = t0, 0

    def elapsed():
        return elapsed_before + time.perf_counter() - t0

    for step in range(start, stop):
        if should_stop():
            _interrupted(should_stop(), step, run, folder, params, opt_state, history, elapsed())
        ids, targets = batch(run, STREAM_DATA, step)
        try:
            loss, grads, logits, grad_norm, lr, new_params, new_state = _step(
                run, config, opt, params, opt_state, ids, targets, step, folder, threads)
        except MemoryError:
            held = _save_finished(folder, step, params, opt_state, history, elapsed())
            raise RunStopped(f"out of memory at step {step + 1} of {run['steps']}; {held}; "
                             f"lower --batch_size or --seq_len in a new run") from None
        params, opt_state = new_params, new_state
        window_steps += 1
        if (step + 1) % log_every == 0 or step + 1 == stop:
            now = time.perf_counter()
            per_step = (now - window_t) / window_steps
            acc = tasks.accuracy(logits, targets[targets != tasks.IGNORE])  # logits: (n, V)
            row = {"step": step + 1, "split": "train", "loss": loss, "accuracy": acc, "lr": lr,
                   "grad_norm": grad_norm,
                   "tokens_per_sec": ids.size / per_step,
                   "elapsed_sec": elapsed()}
            history.append([row[f] for f in CSV_FIELDS])
            folder.write_metrics(history, step + 1)
            log(f"step {step + 1:>6}/{run['steps']}  loss {loss:.4f}  acc {acc:.3f}  "
                f"lr {lr:.2e}  gnorm {grad_norm:.2f}  {row['tokens_per_sec']:,.0f} tok/s  "
                f"left {_format_time(per_step * (stop - step - 1))}")
            window_t, window_steps = now, 0
        if (step + 1) % save_every == 0 or step + 1 == stop:
            folder.save(params, opt_state, step + 1, history, elapsed())

    result = {"params": params, "opt_state": opt_state, "step": stop, "history": history,
              "train_sec": elapsed()}
    if stop < run["steps"]:
        log(f"stopped at step {stop} of {run['steps']} (--stop_after); wrote "
            f"{folder.checkpoint} and {folder.metrics}; continue with: "
            f"{resume_command(folder.checkpoint)}")
        return result
    if not folder.saved_at(stop):  # a resumed run that had finished its steps
        folder.save(params, opt_state, stop, history, elapsed())
    done = _heldout_row(history, stop)
    if done is None:
        with np.errstate(all="ignore"):
            try:
                measured = evaluate(params, run, run["eval_batches"], should_stop)
            except ValueError as err:  # as in _step: an internal check saw nan or inf
                if "nan or inf" not in str(err):
                    raise
                raise _diverged(run, stop - 1, "the held-out evaluation overflowed to nan or "
                                "inf inside the model", folder) from None
        if measured is None:
            _interrupted(should_stop(), stop, run, folder, params, opt_state, history,
                         elapsed())
        history.append([stop, "heldout", *measured, "", "", "", elapsed()])
        folder.save(params, opt_state, stop, history, elapsed())
        done = history[-1]
    else:
        log(f"the run was already finished and evaluated at step {stop}")
    result.update(heldout_loss=done[2], heldout_accuracy=done[3], train_sec=elapsed())
    bits = f" ({text.bits_per_char(done[2]):.3f} bits per character)" if run["task"] == "text" \
        else ""
    log(f"held-out: loss {done[2]:.4f}{bits}  accuracy {done[3]:.4f} ({run['eval_batches']} "
        f"batches of {run['batch_size']})")
    log(f"wrote {folder.checkpoint} and {folder.metrics}; total {_format_time(elapsed())}")
    return result


def _step(run, config, opt, params, opt_state, ids, targets, step, folder, threads):
    """One training step with every quantity checked: a nan or inf loss, gradient or parameter
    stops the run (RunStopped) naming the step and the quantity, before any state changes."""
    # Non-finite values are checked below, by name: no NumPy warnings (errstate for this
    # thread, the filter for the shards' threads).
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        loss, grads, logits = data_parallel.loss_and_grads(
            params, ids, targets, config, threads=threads, training=run["dropout"] > 0,
            rng=_rng(run, STREAM_DROPOUT, step))
        if not math.isfinite(loss):
            # the weights are finite (checked after every update), so the activations overflowed
            largest = max(params, key=lambda name: float(np.abs(params[name]).max()))
            raise _diverged(run, step, f"the loss is {float(loss)}: the activations overflowed "
                            f"to nan or inf inside the model (largest weight: {largest!r}, up to "
                            f"{float(np.abs(params[largest]).max()):.3g})", folder)
        norm = optim.global_norm(grads)
        if not math.isfinite(norm):
            raise _diverged(run, step, f"the gradient norm is {norm} (first non-finite: the "
                            f"gradient of {_first_nonfinite(grads)!r})", folder)
        grads, grad_norm = optim.clip_by_global_norm(grads, run["clip"])
        lr = optim.warmup_cosine(step, peak_lr=run["lr"], warmup_steps=run["warmup"],
                                 total_steps=run["steps"], min_lr=run["min_lr"])
        new_params, new_state = opt.step(params, grads, opt_state, lr)
        bad = _first_nonfinite(new_params)
        if bad is not None:
            raise _diverged(run, step, f"the update made the weight {bad!r} nan or inf", folder)
    return float(loss), grads, logits, grad_norm, lr, new_params, new_state


def _save_finished(folder, step, params, opt_state, history, elapsed):
    """Save the state after ``step`` steps unless it is on disk already; says where it is."""
    if step == 0:
        return "nothing to save before the first step"
    if not folder.saved_at(step):
        folder.save(params, opt_state, step, history, elapsed)
        return f"saved {folder.checkpoint} at step {step}"
    return f"{folder.checkpoint} holds step {step}"


def _interrupted(signum, step, run, folder, params, opt_state, history, elapsed):
    """Save the last finished step (unless on disk already) and raise RunStopped."""
    held = _save_finished(folder, step, params, opt_state, history, elapsed)
    how = f"; continue with: {resume_command(folder.checkpoint)}" if step else ""
    raise RunStopped(f"interrupted by {signal.Signals(signum).name} at step {step} of "
                     f"{run['steps']}: {held}{how}", 128 + signum)


# -- the command -----------------------------------------------------------------------------

class _StopNow(BaseException):
    """A second SIGINT or SIGTERM: stop at once (a save in progress is abandoned cleanly)."""


class _Stops:
    """What SIGINT and SIGTERM have asked for, as seen by the handler ``_stop_signals`` sets.

    Called, it returns the first signal's number or None. The first signal only sets the flag
    (the loop stops at the next step); the second raises _StopNow, once. After ``silence()``
    (the command is reporting its outcome and exiting) signals change nothing, so a burst of
    signals can never raise inside the report or the cleanup.

    Inside ``held()`` (a file's contents being written: ``RunFolder``) the second signal waits
    and raises as the block ends, which abandons the save. Raised where it arrives, inside
    ``np.savez``, it could leave the zip file with a member open, and closing the zip would
    raise a ValueError in its place: the command would exit with status 2, reporting an error
    about a zip file, instead of with the signal's status.
    """

    def __init__(self):
        self.received, self.raised, self.silent = None, False, False
        self.holding, self.pending = 0, None  # the depth of held(); the signal that waits
        # before training starts (the checks, reading a text or a checkpoint) there is nothing
        # to save, so the first signal stops at once: a read that blocks (a device file such
        # as /proc/kmsg looks like a regular file) must not make the command deaf to SIGTERM
        self.at_once = False

    def __call__(self):
        return self.received

    def silence(self):
        self.silent = True

    def handler(self, signum, frame):
        if self.received is None and not self.at_once:
            self.received = signum
        elif self.raised or self.silent:
            pass
        elif self.holding:
            self.pending = self.pending or signum
        else:
            self.raised = True
            raise _StopNow(signum)

    @contextlib.contextmanager
    def held(self):
        """The second signal waits while the block runs and raises _StopNow as it ends."""
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1
        if not (self.holding or self.pending is None or self.raised or self.silent):
            self.raised = True
            raise _StopNow(self.pending)


@contextlib.contextmanager
def _stop_signals(restore=True):
    """While active, SIGINT and SIGTERM set a flag that the loop checks between steps; a
    second one raises _StopNow. Yields the ``_Stops`` that reads the flag.

    ``restore`` False keeps the (then silenced) handler after the block: the command's process
    is exiting, and Python's default handlers would turn a signal arriving now into a
    KeyboardInterrupt traceback or a death by SIGTERM with the wrong exit status.
    """
    stops = _Stops()
    if threading.current_thread() is not threading.main_thread():
        yield stops  # signal handlers can only be set from the main thread: none here
        return
    previous = {s: signal.signal(s, stops.handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stops
    finally:
        stops.silence()
        if restore:
            for s, h in previous.items():
                signal.signal(s, h)


def _running_as_command():
    """True in ``python -m gla_np.train``'s own process (not when main is called from Python)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) in ("gla_np.train", "gla_np.training.train")


_UNSET = object()


def given_options(argv):
    """The names of the options written on the command line ``argv`` (even when equal to
    their defaults): parse once more with every default replaced by a marker."""
    probe = build_parser()
    probe.set_defaults(**{a.dest: _UNSET for a in probe._actions if a.dest != "help"})
    return {name for name, value in vars(probe.parse_args(argv)).items() if value is not _UNSET}


def prepare(args, given, guard=contextlib.nullcontext):
    """Everything checked before training: returns ``(run, out, session, lock)`` or raises
    ValueError, leaving nothing on disk. The lock is taken inside the context manager
    ``guard()`` (main's holds its signals back there, so that a signal cannot leave the lock
    file and the folders made for it behind).

    Cheapest first: the options by arithmetic (sizes, memory) before anything is built; then
    the lock of the output folder (``_files.lock_folder``, which makes the folder), so that what is
    checked about the folder and the checkpoint stays true while this run writes there; then
    the checkpoint to resume, and the folder. The caller releases ``lock`` when the run ends.

    A new run takes its options from the command line. A resumed run takes them from the
    checkpoint; an option given explicitly must agree with it, even when it equals its default.
    ``log_every`` and ``save_every`` shape only the files, so they may change on resume; when
    not given, the checkpoint's own are used again (``session``).
    The output folder defaults to the checkpoint's own; a folder holding another checkpoint is
    refused unless ``--overwrite`` (which then deletes that checkpoint and its CSV).
    """
    _train_checks.check_session(vars(args))
    session = {name: getattr(args, name) for name in SESSION_SAVED}
    if args.resume is None:
        run = {name: getattr(args, name) for name in RUN_OPTIONS}
        run.update(text.run_options(run, given))  # --task text: the file and its vocabulary
        _train_checks.check_run(run)
        _train_checks.check_history(run, args.log_every)
        out = args.out
    else:
        _train_checks.check_resume_path(args.resume)
        out = args.out if "out" in given else (os.path.dirname(args.resume) or os.curdir)
    if not out:
        raise ValueError("--out: expected a folder name, got ''")
    lock = None
    try:
        with guard():
            lock = _files.lock_folder(out)
        if args.resume is not None:
            run = _check_resume(args, given, session)
        existing = os.path.join(out, CHECKPOINT)
        for name in (CHECKPOINT, METRICS):  # the run would write over the text it reads
            if run["task"] == "text" and _same_file(run["text"], os.path.join(out, name)):
                raise ValueError(f"--text {run['text']}: is the {name} the run writes in --out "
                                 f"{out}; move the text, or choose another --out")
        _train_checks.check_out_folder(
            out, 2 * _train_checks.checkpoint_bytes(run, session["log_every"]),
            names=(CHECKPOINT, METRICS))
        replace = os.path.isfile(existing) and not (args.resume
                                                    and _same_file(existing, args.resume))
        if replace and not args.overwrite:
            raise ValueError(f"--out {out}: already holds a checkpoint ({existing}); continue "
                             f"that run with --resume {existing}, or replace it with "
                             f"--overwrite")
        if replace:
            for name in (CHECKPOINT, METRICS):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(out, name))
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return run, out, session, lock


def _check_resume(args, given, session):
    """The run stored in ``--resume``'s checkpoint, checked, with ``session`` completed from
    it; reads the checkpoint's config and history, not its arrays (``train`` reads those,
    each checked against the run's shapes)."""
    ck = checkpoint.load(args.resume, arrays=False)
    ck.config.setdefault("text", "")  # runs saved before --task text existed
    if args.text:  # compared with the stored absolute path
        args.text = os.path.abspath(args.text)
    # a text run's file first: an edited text is named as such, not as a damaged vocab_size
    run = _train_checks.check_stored_run(args.resume, ck.config, RUN_OPTIONS, draw=False)
    text.check_stored(f"checkpoint {args.resume}", run, ck.extra)
    run = _train_checks.check_stored_run(args.resume, ck.config, RUN_OPTIONS)
    if ck.step > run["steps"]:
        raise ValueError(f"checkpoint {args.resume}: step {ck.step} is beyond "
                         f"config['steps'] = {run['steps']}")
    conflicts = [f"--{n} {getattr(args, n)!r} (checkpoint: {run[n]!r})"
                 for n in RUN_OPTIONS if n in given and getattr(args, n) != run[n]]
    if conflicts:
        raise ValueError(f"--resume: options differ from the checkpoint {args.resume}: "
                         + ", ".join(conflicts))
    if args.stop_after is not None and args.stop_after < ck.step:
        raise ValueError(f"--stop_after: expected >= {ck.step}, the step the checkpoint "
                         f"is at, got {args.stop_after}")
    for name in SESSION_SAVED:
        if name not in given and name in ck.extra:
            session[name] = ck.extra[name]
    try:
        _train_checks.check_session(session, label=lambda name: f"extra[{name!r}]")
    except ValueError as err:
        raise ValueError(f"checkpoint {args.resume}: {err}") from None
    _train_checks.check_history(run, session["log_every"])
    return run


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def main(argv=None):
    """Parse the command line and train; returns train()'s result dict.

    Exits with status 2 and one line for anything refused up front, with 1 when a run diverges
    or cannot save, with 128 + the signal number when interrupted by SIGINT or SIGTERM. The
    output folder is locked from before it is checked until the run ends (``_files.
    lock_folder``): a second run into it is refused, naming the first.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    held = []  # the folder's lock, once taken
    with _stop_signals(restore=not _running_as_command()) as stops:
        try:
            try:
                stops.at_once = True  # until the checks are done: nothing to save yet
                run, out, session, lock = prepare(args, given_options(argv), stops.held)
                stops.at_once = False
                held.append(lock)
                if lock.previous:
                    _print(f"took over the lock of {out} from a run that ended without "
                           f"releasing it ({lock.previous})")
                return train(run, out=out, resume=args.resume, stop_after=args.stop_after,
                             should_stop=stops, folder_lock=lock, **session)
            finally:
                stops.silence()  # from here on no signal raises: the outcome is reported
        except ValueError as err:
            status, message = 2, f"error: {err}"
        except RunStopped as stopped:
            status, message = stopped.status, str(stopped)
        except _StopNow as now:
            signum = now.args[0]
            which = "" if stops.at_once else "a second "
            status, message = 128 + signum, (f"stopped at once by {which}"
                                             f"{signal.Signals(signum).name}"
                                             + (" before training started; nothing was written"
                                                if stops.at_once else "; checkpoints on disk "
                                                "are whole"))
        finally:
            for lock in held:
                lock.release()
        if _running_as_command():
            _exit_now(status, f"{parser.prog}: {_one_line(message)}\n")
        parser.exit(status, f"{parser.prog}: {_one_line(message)}\n")


def _exit_now(status, line):
    """Print ``line`` on stderr and end the process with ``status`` at once.

    Not through ``sys.exit``: the interpreter's shutdown gives SIGINT and SIGTERM back their
    default actions, so the rest of a burst of signals would kill the process by the signal
    (status -2 or -15 to its parent) after the report was printed. The run's files and its lock
    are closed by now; only the standard streams need a flush."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.write(line)
        sys.stderr.flush()
    os._exit(status)


def _relaunch_for_threads(argv):
    """Start the command again with ``data_parallel.PROCESS_ENV`` set, unless it already is.

    NumPy's BLAS reads its thread count once, when NumPy is imported, which has happened before
    this module runs, and glibc reads its malloc settings when the process starts. The
    matrices here are small (64 x 64 and the like): data parallel threads use the cores better
    than BLAS threads, and a second BLAS thread in each shard's thread would oversubscribe the
    cores and spin (measured, docs/performance.md).
    """
    build_parser().parse_args(argv)  # --help and bad options exit here, before relaunch
    env = data_parallel.process_environment(os.environ)
    if env == dict(os.environ):
        return
    os.execve(sys.executable, [sys.executable, "-m", "gla_np.train", *argv], env)


if __name__ == "__main__":
    _relaunch_for_threads(sys.argv[1:])
    main(sys.argv[1:])
