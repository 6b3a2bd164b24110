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

At the end the model is evaluated on ``eval_batches`` held-out batches, and the output folder
gets ``checkpoint.npz`` (see gla_np.checkpoint) and ``metrics.csv`` (one row per logged step,
and a last row with the held-out loss and accuracy).

The defaults train MQAR (T = 64, 8 key-value pairs, vocabulary 256) to >= 99 % held-out accuracy
on a 2-core CPU in under five minutes; docs/experiments.md has the measurements.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time

import numpy as np

from gla_np import checkpoint, cross_entropy, data_parallel, lm, optim, tasks
from gla_np.model import GLAConfig

# The options that define a run (stored in the checkpoint; a resume must agree with them).
RUN_OPTIONS = ("task", "seq_len", "num_pairs", "num_tokens", "vocab_size", "steps", "batch_size",
               "lr", "min_lr", "warmup", "weight_decay", "clip", "form", "gate", "hidden",
               "layers", "heads", "head_dim", "expand", "short_conv", "dropout", "dtype", "seed")
STREAM_DATA, STREAM_DROPOUT, STREAM_EVAL, STREAM_INIT = 0, 1, 2, 3
CSV_FIELDS = ("step", "split", "loss", "accuracy", "lr", "grad_norm", "tokens_per_sec",
              "elapsed_sec")


def build_parser():
    """The command line; every option has help text and a default chosen by experiment."""
    p = argparse.ArgumentParser(
        prog="python -m gla_np.train",
        description="Train a small GLA on a toy sequence task, evaluate it on held-out data, "
                    "write a checkpoint and a metrics CSV.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--task", default="mqar", choices=sorted(tasks.TASKS), help="the toy task")
    a("--seq_len", type=int, default=64, help="sequence length T")
    a("--num_pairs", type=int, default=8, help="MQAR: key-value pairs per sequence")
    a("--num_tokens", type=int, default=8, help="copying tasks: tokens to copy per sequence")
    a("--vocab_size", type=int, default=256, help="vocabulary size")
    a("--steps", type=int, default=1500, help="training steps (one batch each)")
    a("--batch_size", type=int, default=64, help="sequences per batch")
    a("--lr", type=float, default=3e-3, help="peak learning rate (AdamW)")
    a("--min_lr", type=float, default=3e-4, help="learning rate at the end of the cosine decay")
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
    a("--out", default=os.path.join("runs", "latest"),
      help="output folder for checkpoint.npz and metrics.csv")
    a("--resume", default=None, metavar="CHECKPOINT",
      help="continue the run saved in this checkpoint (its options are reused)")
    a("--stop_after", type=int, default=None,
      help="stop after this many steps in total and save a checkpoint, as if interrupted "
           "(continue later with --resume); no held-out evaluation")
    a("--eval_batches", type=int, default=16, help="held-out batches for the final evaluation")
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


def task_sizes(run):
    """The keyword arguments of the run's task function."""
    sizes = {"seq_len": run["seq_len"], "vocab_size": run["vocab_size"]}
    if run["task"] == "mqar":
        sizes["num_pairs"] = run["num_pairs"]
    else:
        sizes["num_tokens"] = run["num_tokens"]
    return sizes


def _rng(run, stream, index):
    return np.random.default_rng([run["seed"], stream, index])


def batch(run, stream, index):
    """The batch number ``index`` of a random stream (training data or held-out data)."""
    return tasks.make_batch(run["task"], _rng(run, stream, index), run["batch_size"],
                            **task_sizes(run))


def _check_run(run):
    for name in ("steps", "batch_size", "eval_batches", "log_every", "stop_after"):
        if name in run and run[name] < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {run[name]}")
    if run["seed"] < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {run['seed']}")
    for name in ("lr", "clip"):
        if not run[name] > 0:
            raise ValueError(f"{name}: expected a number > 0, got {run[name]}")
    if not 0 <= run["warmup"] <= run["steps"]:
        raise ValueError(f"warmup: expected 0 <= warmup <= steps={run['steps']}, "
                         f"got {run['warmup']}")
    if not 0 <= run["min_lr"] <= run["lr"]:
        raise ValueError(f"min_lr: expected 0 <= min_lr <= lr={run['lr']}, got {run['min_lr']}")
    batch(run, STREAM_EVAL, 0)  # task sizes: raises ValueError naming the bad option
    model_config(run)  # model sizes: likewise


def _resolve_run(args, parser):
    """The run options: from the command line, or from the checkpoint when resuming.

    When resuming, an option given on the command line with a value other than its default must
    agree with the checkpoint; the others are taken from the checkpoint.
    """
    given = {name: getattr(args, name) for name in RUN_OPTIONS}
    if args.resume is None:
        return given
    stored = checkpoint.load(args.resume).config
    conflicts = [f"--{n} {given[n]!r} (checkpoint: {stored.get(n)!r})" for n in RUN_OPTIONS
                 if given[n] != parser.get_default(n) and given[n] != stored.get(n)]
    if conflicts:
        raise ValueError(f"resume: options differ from the checkpoint {args.resume}: "
                         + ", ".join(conflicts))
    return {name: stored.get(name, given[name]) for name in RUN_OPTIONS}


def _format_time(seconds):
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s"


def evaluate(params, run, num_batches):
    """Held-out (loss, accuracy) over ``num_batches`` batches of the evaluation stream."""
    config = model_config(run)
    losses, correct, counted = [], 0, 0
    for i in range(num_batches):
        ids, targets = batch(run, STREAM_EVAL, i)
        logits, _ = lm.forward(params, ids, config)
        loss, _ = cross_entropy.forward(logits, targets)
        mask = targets != tasks.IGNORE
        losses.append(float(loss))
        correct += int((logits.argmax(-1)[mask] == targets[mask]).sum())
        counted += int(mask.sum())
    return float(np.mean(losses)), correct / counted


def train(run, *, out, resume=None, stop_after=None, eval_batches=16, log_every=25,
          log=print, threads=None):
    """Run (or continue) training; returns a dict with the params, metrics and timings.

    ``threads`` shards each step's batch over that many threads (None: every core); the shards'
    gradients are combined exactly (gla_np.data_parallel), so it changes speed and rounding only.
    """
    _check_run({**run, "eval_batches": eval_batches, "log_every": log_every,
                **({} if stop_after is None else {"stop_after": stop_after})})
    config = model_config(run)
    opt = optim.AdamW(weight_decay=run["weight_decay"])
    params = lm.init_params(config, run["vocab_size"], _rng(run, STREAM_INIT, 0))
    opt_state = opt.init(params)
    start, history, elapsed_before = 0, [], 0.0
    if resume is not None:
        ck = checkpoint.load(resume, config=run, params_like=params, opt_state_like=opt_state)
        params, opt_state, start = ck.params, ck.opt_state, ck.step
        history, elapsed_before = ck.extra.get("history", []), ck.extra.get("elapsed_sec", 0.0)
        log(f"resumed from {resume} at step {start}")
    stop = run["steps"] if stop_after is None else min(stop_after, run["steps"])
    if stop < start:
        raise ValueError(f"stop_after: expected >= {start}, the step the checkpoint is at, "
                         f"got {stop_after}")
    os.makedirs(out, exist_ok=True)
    log(f"training {run['task']} with {sum(p.size for p in params.values()):,} parameters "
        f"({config.num_layers} layers, hidden {config.hidden_size}, gate {config.gate}, form "
        f"{config.form}, {config.dtype}) for steps {start}..{stop} of {run['steps']}")

    t0 = time.perf_counter()
    window_t, window_steps = t0, 0
    for step in range(start, stop):
        ids, targets = batch(run, STREAM_DATA, step)
        loss, grads, logits = data_parallel.loss_and_grads(
            params, ids, targets, config, threads=threads, training=run["dropout"] > 0,
            rng=_rng(run, STREAM_DROPOUT, step))
        grads, grad_norm = optim.clip_by_global_norm(grads, run["clip"])
        lr = optim.warmup_cosine(step, peak_lr=run["lr"], warmup_steps=run["warmup"],
                                 total_steps=run["steps"], min_lr=run["min_lr"])
        params, opt_state = opt.step(params, grads, opt_state, lr)
        window_steps += 1
        if (step + 1) % log_every == 0 or step + 1 == stop:
            now = time.perf_counter()
            per_step = (now - window_t) / window_steps
            acc = tasks.accuracy(logits, targets[targets != tasks.IGNORE])  # logits: (n, V)
            row = {"step": step + 1, "split": "train", "loss": loss, "accuracy": acc, "lr": lr,
                   "grad_norm": grad_norm,
                   "tokens_per_sec": ids.size / per_step,
                   "elapsed_sec": elapsed_before + now - t0}
            history.append([row[f] for f in CSV_FIELDS])
            log(f"step {step + 1:>6}/{run['steps']}  loss {loss:.4f}  acc {acc:.3f}  "
                f"lr {lr:.2e}  gnorm {grad_norm:.2f}  {row['tokens_per_sec']:,.0f} tok/s  "
                f"left {_format_time(per_step * (stop - step - 1))}")
            window_t, window_steps = now, 0

    elapsed = elapsed_before + time.perf_counter() - t0
    result = {"params": params, "opt_state": opt_state, "step": stop, "history": history,
              "train_sec": elapsed}
    if stop == run["steps"]:
        loss, acc = evaluate(params, run, eval_batches)
        history.append([stop, "heldout", loss, acc, "", "", "",
                        elapsed_before + time.perf_counter() - t0])
        result.update(heldout_loss=loss, heldout_accuracy=acc)
    path = os.path.join(out, "checkpoint.npz")
    checkpoint.save(path, config=run, params=params, opt_state=opt_state, step=stop,
                    extra={"history": history, "elapsed_sec": elapsed})
    with open(os.path.join(out, "metrics.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        writer.writerows(history)
    if "heldout_accuracy" in result:
        log(f"held-out: loss {result['heldout_loss']:.4f}  accuracy "
            f"{result['heldout_accuracy']:.4f} ({eval_batches} batches of {run['batch_size']})")
    log(f"wrote {path} and {os.path.join(out, 'metrics.csv')}; "
        f"total {_format_time(time.perf_counter() - t0 + elapsed_before)}")
    return result


def main(argv=None):
    """Parse the command line and train; returns train()'s result dict."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run = _resolve_run(args, parser)
        return train(run, out=args.out, resume=args.resume, stop_after=args.stop_after,
                     eval_batches=args.eval_batches, log_every=args.log_every,
                     threads=args.threads)
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")


def _relaunch_for_threads(argv):
    """Start the command again with ``data_parallel.PROCESS_ENV`` set, unless it already is.

    NumPy's BLAS reads its thread count once, when NumPy is imported, which has happened before
    this module runs, and glibc reads its malloc settings when the process starts. The
    matrices here are small (64 x 64 and the like): data parallel threads use the cores better
    than BLAS threads, and a second BLAS thread in each shard's thread would oversubscribe the
    cores and spin (measured, docs/performance.md).
    """
    build_parser().parse_args(argv)  # --help and bad options exit here, before relaunch
    if all(os.environ.get(name) == value for name, value in data_parallel.PROCESS_ENV.items()):
        return
    env = {**os.environ, **data_parallel.PROCESS_ENV}
    os.execve(sys.executable, [sys.executable, "-m", "gla_np.train", *argv], env)


if __name__ == "__main__":
    _relaunch_for_threads(sys.argv[1:])
    main(sys.argv[1:])
