"""What ``python -m gla_np.train`` refuses before it trains, each with a one-line ValueError.

A run that fails after an hour because of something knowable at start-up wastes the hour, so
everything that can be checked is checked first (docs/reliability.md lists it all), in the
order that costs least: arithmetic on the options before anything is built or written.

* every option: its type, its range, and how it fits the others (``check_run``,
  ``check_session``, ``check_history``). The checks name the option as the user wrote it:
  ``--lr`` on the command line, ``config['lr']`` in a checkpoint (``label``).
* memory: one step's activations, estimated from the sizes (``step_memory``), against the
  memory available now (``available_memory``); inside ``check_run``, before the task draws
  its one test sequence, so a huge ``--seq_len`` is refused before anything of its size exists.
* a checkpoint to resume: that it is a regular file, and that its stored config is complete
  and sane (``check_stored_run``), since a hand-edited or damaged file must give a clear
  ValueError, never a TypeError from deep inside the loop.
* the output folder, once its lock is held (gla_np._files.lock_folder): it is writable, has room
  for two checkpoints (the old one stays until the new one replaces it), and what it holds
  under the run's file names are regular files (``check_out_folder``).
"""

from __future__ import annotations

import math
import numbers
import os
import shutil
import tempfile

import numpy as np

from gla_np.layers import model
from gla_np.layers.model import GLAConfig
from gla_np.recurrence import parallel
from gla_np.training import tasks

# minimum of each integer option of a run
RUN_INTS = {"seq_len": 1, "num_pairs": 1, "num_tokens": 1, "vocab_size": 1, "steps": 1,
            "batch_size": 1, "warmup": 0, "hidden": 1, "layers": 1, "heads": 1, "head_dim": 1,
            "expand": 1, "seed": 0, "eval_batches": 1}
RUN_FLOATS = ("lr", "min_lr", "weight_decay", "clip", "dropout")
RUN_CHOICES = {"task": tuple(sorted(tasks.TASKS)), "form": ("chunk", "parallel", "recurrent"),
               "gate": ("vector", "scalar", "fixed", "none"), "dtype": ("float32", "float64")}
RUN_BOOLS = ("short_conv",)
RUN_PATHS = ("text",)  # --task text: the file's absolute path; "" for the other tasks
RUN_KEYS = (*RUN_INTS, *RUN_FLOATS, *RUN_CHOICES, *RUN_BOOLS, *RUN_PATHS)
MAX_LR = 1.0
# Rows of the metrics history a run may log: the history is stored in every checkpoint as JSON
# (at most about 170 characters a row, 4 bytes each), which must stay within
# checkpoint.MAX_TEXT_BYTES (256 MiB).
MAX_HISTORY_ROWS = 300_000


def flag(name):
    """How the command line spells an option: ``--lr``."""
    return f"--{name}"


def _int(label, name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{label(name)}: expected an integer >= {minimum}, got {value!r}")


def check_run(run, label=flag, *, draw=True):
    """Check the options that shape a run (the keys ``RUN_KEYS``); ValueError naming the first
    bad one as ``label(name)``. Types are checked too, for configs read from a file.

    Cheapest first: types, ranges and how the options fit together (arithmetic), then memory,
    and only then the task's own size rules, which draw one sequence of the run's length
    (``draw=False`` skips them: for a text run they read the text file, which sampling from a
    finished run must not need)."""
    _check_options(run, label)
    check_memory(run, label)
    if draw:
        _check_task_sizes(run, label)


def _check_options(run, label):
    missing = [name for name in RUN_KEYS if name not in run]
    if missing:
        raise ValueError(f"run: expected every option of {list(RUN_KEYS)}; missing {missing}")
    for name, minimum in RUN_INTS.items():
        _int(label, name, run[name], minimum)
    for name in RUN_FLOATS:
        value = run[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not math.isfinite(value):
            raise ValueError(f"{label(name)}: expected a finite number, got {value!r}")
    for name, choices in RUN_CHOICES.items():
        if run[name] not in choices:
            raise ValueError(f"{label(name)}: expected one of {list(choices)}, got {run[name]!r}")
    for name in RUN_BOOLS:
        if not isinstance(run[name], bool):
            raise ValueError(f"{label(name)}: expected true or false, got {run[name]!r}")
    for name in RUN_PATHS:
        if not isinstance(run[name], str):
            raise ValueError(f"{label(name)}: expected a path (a string), got {run[name]!r}")
    lr = run["lr"]
    # AdamW moves every weight by about lr per step, whatever the gradient's size; the weights
    # start near 0.02, so a step above 1 can only throw them away (and 1e308 overflows).
    if not 0 < lr <= MAX_LR:
        raise ValueError(f"{label('lr')}: expected a number in (0, {MAX_LR:g}] (AdamW moves "
                         f"each weight by about lr per step), got {lr!r}")
    if not 0 <= run["min_lr"] <= lr:
        raise ValueError(f"{label('min_lr')}: expected 0 <= min_lr <= lr = {lr!r}, "
                         f"got {run['min_lr']!r}")
    if not 0 <= run["weight_decay"] * lr <= 1:
        raise ValueError(f"{label('weight_decay')}: expected 0 <= weight_decay <= 1 / lr = "
                         f"{1 / lr:g} (each step multiplies the weight matrices by "
                         f"1 - lr * weight_decay), got {run['weight_decay']!r}")
    if not run["clip"] > 0:
        raise ValueError(f"{label('clip')}: expected a number > 0, got {run['clip']!r}")
    if not 0 <= run["dropout"] < 1:
        raise ValueError(f"{label('dropout')}: expected a number in [0, 1), got "
                         f"{run['dropout']!r}")
    if run["warmup"] > run["steps"]:
        raise ValueError(f"{label('warmup')}: expected 0 <= warmup <= steps = {run['steps']}, "
                         f"got {run['warmup']}")
    if run["form"] == "parallel":
        entries = run["batch_size"] * run["heads"] * run["seq_len"] ** 2 * run["head_dim"]
        if entries > parallel.MAX_DECAY_ENTRIES:
            raise ValueError(f"{label('form')}: 'parallel' makes a decay tensor of batch_size * "
                             f"heads * seq_len^2 * head_dim = {entries:,} entries here, over "
                             f"its limit of {parallel.MAX_DECAY_ENTRIES:,}; use 'chunk'")


def task_sizes(run):
    """The keyword arguments of the run's task function."""
    sizes = {"seq_len": run["seq_len"], "vocab_size": run["vocab_size"]}
    if run["task"] == "text":
        sizes["text"] = run["text"]
    elif run["task"] in ("mqar", "latest_recall"):
        sizes["num_pairs"] = run["num_pairs"]
    else:
        sizes["num_tokens"] = run["num_tokens"]
    return sizes


def _check_task_sizes(run, label):
    """The task's own size rules (each stated once, in gla_np.training.tasks), here up front.

    One sequence is drawn with the run's sizes; a refusal names the task function's argument,
    which is also the option's name.
    """
    try:
        tasks.make_batch(run["task"], np.random.default_rng(0), 1, **task_sizes(run))
    except ValueError as err:
        name, _, rest = str(err).partition(":")
        raise ValueError(f"{label(name)}:{rest}") from None


def check_session(options, label=flag):
    """Check the options that do not shape the run (they may change on resume)."""
    for name in ("log_every", "save_every"):
        _int(label, name, options[name], 1)
    for name in ("stop_after", "threads"):
        if options.get(name) is not None:
            _int(label, name, options[name], 1)


def check_history(run, log_every, label=flag):
    """The metrics history the run will log (a row every ``log_every`` steps) must fit in its
    checkpoint (``MAX_HISTORY_ROWS``)."""
    rows = run["steps"] // log_every + 1
    if rows > MAX_HISTORY_ROWS:
        raise ValueError(f"{label('steps')} {run['steps']:,} with {label('log_every')} "
                         f"{log_every:,}: the metrics history of {rows:,} rows, stored in each "
                         f"checkpoint, would exceed its limit of {MAX_HISTORY_ROWS:,} rows; "
                         f"raise {label('log_every')} or lower {label('steps')}")


def check_stored_run(path, config, run_keys, *, draw=True):
    """The run options stored in checkpoint ``path``, checked as ``check_run`` checks the
    command line (named ``config['key']``); ValueError for a missing, unknown or bad key.
    ``draw``: as for ``check_run``."""
    where = f"checkpoint {path}"
    if not isinstance(config, dict):
        raise ValueError(f"{where}: config: expected a JSON object, got {type(config).__name__}")
    for key in run_keys:
        if key not in config:
            raise ValueError(f"{where}: config has no {key!r} (a run stores every option "
                             f"that shapes it); not written by python -m gla_np.train, or "
                             f"damaged")
    unknown = sorted(set(config) - set(run_keys))
    if unknown:
        raise ValueError(f"{where}: config has an unknown key {unknown[0]!r}")
    run = dict(config)
    for name in RUN_FLOATS:  # a hand-edited file may say 1 for 1.0: both are numbers
        if isinstance(run[name], int) and not isinstance(run[name], bool):
            run[name] = float(run[name])
    try:
        check_run(run, label=lambda name: f"config[{name!r}]", draw=draw)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return run


def check_resume_path(path):
    """``--resume`` must name an existing regular file (a FIFO would block the reader)."""
    if not path:
        raise ValueError("--resume: expected the path of a checkpoint file, got ''")
    if os.path.isdir(path):
        raise ValueError(f"--resume {path}: is a folder; expected a checkpoint file such as "
                         f"{os.path.join(path, 'checkpoint.npz')}")
    if not os.path.exists(path):
        raise ValueError(f"--resume {path}: no such file")
    if not os.path.isfile(path):
        raise ValueError(f"--resume {path}: is not a regular file (a FIFO or a device?); "
                         f"expected a checkpoint file")


# -- memory ----------------------------------------------------------------------------------

def step_memory(run):
    """Bytes one training step needs, about: activations kept for the backward pass, the
    largest temporary of the chosen form, and five copies of the parameters (the parameters,
    their gradients, AdamW's two moments, the updated parameters).

    The coefficients count arrays of each size that are alive at the peak; they were fitted to
    tracemalloc's peak over 48 random configurations (within a factor 0.8 to 1.2), and
    tests/test_train_options.py checks a few configurations against tracemalloc again.
    """
    B, T, D, H, K = run["batch_size"], run["seq_len"], run["hidden"], run["heads"], run["head_dim"]
    L, F, V = run["layers"], run["expand"] * run["hidden"], run["vocab_size"]
    n = B * T  # tokens per step
    asked = B * (run["num_pairs"] if run["task"] == "mqar" else run["num_tokens"])  # targets
    if run["task"] == "text":
        asked = n  # the next character at every position
    if run["form"] == "recurrent":
        form = 1.5 * L * B * H * (T + 1) * K * K  # every state S_t, kept per layer
    elif run["form"] == "parallel":
        form = 3 * B * H * T * T * K  # the decay tensor and its kin, one layer at a time
    else:
        C = min(64, T)
        N = -(-T // C)
        form = 3 * (L * B * H * (N + 1) * K * K + B * H * N * C * min(8, C) * K)
    # the head's logits exist only at the target positions (lm.loss_and_grads)
    entries = 5 * asked * V + n * L * (11 * D + 7 * F + 15 * H * K) + form
    return int(entries * _itemsize(run) + 5 * param_bytes(run))


def _itemsize(run):
    return 4 if run["dtype"] == "float32" else 8


def param_bytes(run):
    """Bytes of the token model's parameters (the embedding, the stack, the head).

    Counted for one and for two layers and extended by arithmetic, every layer being alike: a
    huge ``--layers`` costs nothing here (listing its parameters would)."""
    def count(layers):
        return model.param_count(GLAConfig(
            embed_dim=run["hidden"], hidden_size=run["hidden"], num_layers=layers,
            num_heads=run["heads"], head_dim=run["head_dim"], expand_factor=run["expand"],
            use_short_conv=run["short_conv"], gate=run["gate"], dtype=run["dtype"]))

    one, two = count(1), count(2)
    stack = one + (run["layers"] - 1) * (two - one)
    return (stack + 2 * run["vocab_size"] * run["hidden"]) * _itemsize(run)


def available_memory():
    """Bytes of memory available now (the least of the system's and the cgroup's), or None
    where neither can be read."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f, open(usage_file) as g:
                limit, usage = f.read().strip(), g.read().strip()
            if limit.isdigit() and int(limit) < 2 ** 60:
                found.append(max(0, int(limit) - int(usage)))
        except (OSError, ValueError):
            pass
    return min(found) if found else None


def check_memory(run, label=flag):
    """Refuse sizes whose step would not fit in the memory available now."""
    need, have = step_memory(run), available_memory()
    if have is not None and need > have:
        raise ValueError(f"{label('batch_size')} {run['batch_size']} with {label('seq_len')} "
                         f"{run['seq_len']}: one training step needs about {_size(need)} of "
                         f"memory ({run['form']} form, layers {run['layers']}, vocabulary "
                         f"{run['vocab_size']}), more than the {_size(have)} available; lower "
                         f"--batch_size or --seq_len")


def _size(nbytes):
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            break
        nbytes /= 1024
    if unit == "GiB" and nbytes >= 1024:
        return f"{nbytes / 1024:,.1f} TiB"
    return f"{nbytes:,.0f} {unit}" if unit == "bytes" else f"{nbytes:,.1f} {unit}"


# -- the output folder -----------------------------------------------------------------------

def checkpoint_bytes(run, log_every=1):
    """Bytes of one checkpoint, about: the parameters and AdamW's two moments, plus room for
    the config, the metrics history (at most about 700 bytes a row as stored) and the file's
    headers."""
    return 3 * param_bytes(run) + 64 * 1024 + 700 * (run["steps"] // log_every + 10)


def check_out_folder(out, need_bytes, names=()):
    """Check that the folder ``out`` (made already, by the run's lock) is writable with room for
    ``need_bytes``, and that each of ``names`` in it is a regular file if it exists at all;
    ValueError otherwise.

    Writes and removes a small probe file, since only a write shows that writing works
    (permissions, a read-only disk, quotas).
    """
    for name in names:  # a folder named checkpoint.npz would fail only at the first save
        path = os.path.join(out, name)
        if os.path.exists(path) and not os.path.isfile(path):
            raise ValueError(f"--out {out}: {path} exists and is not a regular file; the run "
                             f"writes its {name} there")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gla_np-probe.", suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"--out {out}: cannot write there ({err.strerror or err})") from None
    free = shutil.disk_usage(out).free
    if free < need_bytes:
        raise ValueError(f"--out {out}: only {_size(free)} free on its disk; a checkpoint "
                         f"needs about {_size(need_bytes)} (two while a new one replaces the "
                         f"old)")
