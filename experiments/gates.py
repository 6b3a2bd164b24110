"""What the data-dependent forget gate buys: the gate variants on latest-value recall.

    python3 experiments/gates.py                 # train every run not yet done, then the tables
    python3 experiments/gates.py & python3 experiments/gates.py   # two workers share the list
    python3 experiments/gates.py --report        # only the tables, from what is done so far
    python3 experiments/gates.py --evaluate runs/gates/<run>/checkpoint.npz --seq_len 256

Every run is an ordinary ``python -m gla_np.train`` run (its command is printed with each table
row) on the task ``latest_recall`` (gla_np/training/tasks.py): keys written many times with new
values, then asked for their latest value. One grid, two tables:

* capacity: held-out accuracy against the number of distinct keys P (4, 8, 16) for each gate
  variant (vector, scalar, fixed, none) and two head sizes K (8, 16), at T = 64;
* length: the runs of the cell K = 16, P = 8, trained at T = 64, evaluated with the recurrent
  form at T = 64, 128 and 256 (more writes of the same 8 keys before the questions).

Every cell has the same budget (600 steps of 32 sequences, the same optimizer with peak
learning rate 3e-3, the same model apart from the gate and K) and ``--seeds`` seeds (default 5); the tables give the mean, the standard
deviation and the range over the seeds that have finished, and say how many that is.

Incremental and resumable: each run lives in ``--out``/<run name>/ (train.py's checkpoint and
metrics, plus ``result.json`` when it is finished and evaluated); a finished run is skipped, a
killed one continues from its last checkpoint, and a run being trained by another worker (a
``claim`` file holding a live process id) is left to it. After every run, ``results.csv`` in
``--out`` is rewritten (atomically) from all finished runs. The order puts the length cell's
runs first, then the other cells seed by seed, so a partial set still fills every cell evenly.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np  # noqa: E402

from gla_np import checkpoint, data_parallel, lm, tasks  # noqa: E402
from gla_np.training import train  # noqa: E402

GATES = ("vector", "scalar", "fixed", "none")
HEAD_DIMS = (8, 16)
NUM_PAIRS = (4, 8, 16)
LENGTH_CELL = {"head_dim": 16, "num_pairs": 8}  # the cell also evaluated at other lengths
LENGTH_FACTORS = (1, 2, 4)
# Every other option of a run, pinned here so that a later change of train.py's defaults does
# not change the experiment (the sizes were chosen before the runs, on one seed per gate, so
# that a run takes about 15 s of CPU; not tuned per gate). The optimizer values are train.py's
# defaults when the table was measured.
BASE = {"task": "latest_recall", "seq_len": 64, "vocab_size": 72, "hidden": 64, "steps": 600,
        "batch_size": 32, "lr": 3e-3, "min_lr": 3e-4, "warmup": 50, "weight_decay": 0.1,
        "clip": 1.0, "form": "chunk", "layers": 1, "heads": 1, "expand": 2, "short_conv": True,
        "dropout": 0.0, "dtype": "float32", "eval_batches": 16, "num_tokens": 8}
PAIRS = (("vector", "scalar"), ("vector", "fixed"), ("vector", "none"), ("scalar", "fixed"))
RESULT, CLAIM, RESULTS_CSV = "result.json", "claim", "results.csv"
CSV_FIELDS = ("name", "gate", "head_dim", "num_pairs", "seed", "steps", "train_len", "eval_len",
              "form", "accuracy", "loss", "train_sec", "cpu_sec", "command")


def run_dict(gate, head_dim, num_pairs, seed, **overrides):
    """train.py's run options for one cell and seed (its defaults, then BASE, then these)."""
    defaults = vars(train.build_parser().parse_args([]))
    run = {name: defaults[name] for name in train.RUN_OPTIONS}
    run.update(BASE)
    run.update(gate=gate, head_dim=head_dim, num_pairs=num_pairs, seed=seed, **overrides)
    return run


def shown_out(out):
    """``out`` as a command shows it: relative to the current folder when inside it."""
    rel = os.path.relpath(out)
    return out if rel.startswith("..") else rel


def run_name(run):
    return (f"{run['gate']}-K{run['head_dim']}-P{run['num_pairs']}-T{run['seq_len']}"
            f"-s{run['steps']}-seed{run['seed']}")


def command(run, out):
    """The train.py command line of a run (every option that differs from train.py's default;
    ``--threads 1``: one shard, so the numbers do not depend on the machine's core count)."""
    defaults = vars(train.build_parser().parse_args([]))
    words = ["python", "-m", "gla_np.train"]
    for name in train.RUN_OPTIONS:
        if run[name] != defaults[name] or name == "seed":
            words += [f"--{name}", str(run[name])]
    return shlex.join(words + ["--threads", "1", "--out", os.path.join(out, run_name(run))])


def plan(seeds, overrides=None, gates=GATES, head_dims=HEAD_DIMS, num_pairs=NUM_PAIRS):
    """Every run of the grid, in the order they are trained: the length cell first (it feeds
    both tables), then the other cells seed by seed."""
    overrides = overrides or {}
    runs = [run_dict(g, LENGTH_CELL["head_dim"], LENGTH_CELL["num_pairs"], s, **overrides)
            for s in range(seeds) for g in gates
            if LENGTH_CELL["head_dim"] in head_dims and LENGTH_CELL["num_pairs"] in num_pairs]
    for s in range(seeds):
        for K in head_dims:
            for P in num_pairs:
                if (K, P) != (LENGTH_CELL["head_dim"], LENGTH_CELL["num_pairs"]):
                    runs += [run_dict(g, K, P, s, **overrides) for g in gates]
    return runs


def is_length_cell(run):
    return (run["head_dim"], run["num_pairs"]) == (LENGTH_CELL["head_dim"],
                                                   LENGTH_CELL["num_pairs"])


# -- evaluation at another length --------------------------------------------------------------

def evaluate_at(params, run, seq_len, form="recurrent", num_batches=None):
    """Held-out (loss, accuracy) of a trained model on the run's task at length ``seq_len``,
    computed with ``form``. Nothing in the model depends on T (no positions, no compiled
    length): only the data's length and the form change. The held-out batches come from the
    same evaluation stream as train.py's, drawn at the new length."""
    other = dict(run, seq_len=seq_len, form=form)
    return train.evaluate(params, other, num_batches or run["eval_batches"])


def evaluate_checkpoint(path, seq_len, form="recurrent"):
    ck = checkpoint.load(path)
    return evaluate_at(ck.params, ck.config, seq_len, form)


def forget_gate_rows(path, seed=0):
    """The forget gates exp(g) of a trained one-layer model over one held-out-style sequence of
    its task (drawn from ``seed``), as rows for a CSV: position, token, role, label, keep_0 ..
    keep_{K-1}. Labels: key letters A, B, ... in order of first appearance; ``A?`` the question
    for key A; ``.`` a value; ``_`` the blank."""
    ck = checkpoint.load(path)
    run = ck.config
    config = train.model_config(run)
    if config.num_layers != 1 or config.num_heads != 1:
        raise ValueError(f"{path}: expected a model of 1 layer and 1 head, got "
                         f"{config.num_layers} layers and {config.num_heads} heads")
    ids, _ = tasks.make_batch(run["task"], np.random.default_rng([seed, 7]), 1,
                              **train.task_sizes(run))
    (g,) = lm.forget_gates(ck.params, ids, config)  # (1, T, 1, K)
    kept = np.exp(g[0, :, 0, :].astype(np.float64))  # (T, K)
    V, T, P = run["vocab_size"], run["seq_len"], run["num_pairs"]
    letters = {}
    rows = []
    for t, tok in enumerate(ids[0].tolist()):
        if t >= T - P:
            role, label = "query", letters.get(tok - V // 4, "?") + "?"
        elif tok == 0:
            role, label = "blank", "_"
        elif tok < V // 4:
            letters.setdefault(tok, chr(ord("A") + len(letters)))
            role, label = "key", letters[tok]
        else:
            role, label = "value", "."
        row = {"position": t, "token": tok, "role": role, "label": label}
        row.update({f"keep_{c}": f"{kept[t, c]:.4f}" for c in range(kept.shape[1])})
        rows.append(row)
    return rows


def write_forget_gates(path, csv_path, seed=0):
    rows = forget_gate_rows(path, seed)
    text = io.StringIO()
    writer = csv.DictWriter(text, list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic_text(csv_path, text.getvalue())
    return rows


# -- one run --------------------------------------------------------------------------------

def _write_atomic_text(path, text):
    checkpoint.write_atomic(path, lambda f: f.write(text.encode()))


def _claim(folder):
    """True when this process may train the run in ``folder`` (no live process holds it)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, CLAIM)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            try:
                pid = int(Path(path).read_text() or "0")
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                return False
            with _suppress():
                os.unlink(path)  # a claim left by a process that is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def train_one(run, out, log=lambda line: None):
    """Train (or continue) one run in ``out``/<name>/, evaluate it, write its result.json.
    Returns the result dict, or None when another worker holds the run."""
    folder = os.path.join(out, run_name(run))
    done = os.path.join(folder, RESULT)
    if os.path.isfile(done):
        return json.loads(Path(done).read_text())
    if not _claim(folder):
        return None
    try:
        ck = os.path.join(folder, train.CHECKPOINT)
        resume = ck if os.path.isfile(ck) else None
        cpu0 = time.process_time()
        res = train.train(run, out=folder, resume=resume, threads=1, log=log,
                          log_every=max(1, run["steps"] // 4), save_every=max(1, run["steps"] // 3))
        cpu = time.process_time() - cpu0
        evals = {}
        if is_length_cell(run):
            for factor in LENGTH_FACTORS:
                loss, acc = evaluate_at(res["params"], run, factor * run["seq_len"])
                evals[str(factor * run["seq_len"])] = [loss, acc]
        result = {"name": run_name(run), "run": run, "command": command(run, out),
                  "accuracy": res["heldout_accuracy"], "loss": res["heldout_loss"],
                  "train_sec": res["train_sec"], "cpu_sec": cpu, "recurrent": evals,
                  "machine": machine()}
        _write_atomic_text(done, json.dumps(result, indent=1))
        return result
    finally:
        with _suppress():
            os.unlink(os.path.join(folder, CLAIM))


def machine():
    return (f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"NumPy {np.__version__}, load {os.getloadavg()[0]:.1f}")


# -- results -------------------------------------------------------------------------------

def load_results(out):
    results = []
    if not os.path.isdir(out):
        return results
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name, RESULT)
        if os.path.isfile(path):
            results.append(json.loads(Path(path).read_text()))
    return results


def result_rows(results, out=None):
    """One CSV row per (run, evaluation): the held-out evaluation of train.py (chunked form, the
    training length) and, for the length cell, the recurrent form at each length."""
    rows = []
    for r in results:
        run = r["run"]
        base = {"name": r["name"], "gate": run["gate"], "head_dim": run["head_dim"],
                "num_pairs": run["num_pairs"], "seed": run["seed"], "steps": run["steps"],
                "train_len": run["seq_len"], "train_sec": f"{r['train_sec']:.1f}",
                "cpu_sec": f"{r['cpu_sec']:.1f}",
                "command": command(run, shown_out(out)) if out else r["command"]}
        rows.append({**base, "eval_len": run["seq_len"], "form": run["form"],
                     "accuracy": r["accuracy"], "loss": r["loss"]})
        for length, (loss, acc) in sorted(r["recurrent"].items(), key=lambda kv: int(kv[0])):
            rows.append({**base, "eval_len": int(length), "form": "recurrent",
                         "accuracy": acc, "loss": loss})
    return rows


def write_csv(out, results):
    text = io.StringIO()
    writer = csv.DictWriter(text, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(result_rows(results, out))
    os.makedirs(out, exist_ok=True)
    _write_atomic_text(os.path.join(out, RESULTS_CSV), text.getvalue())


def summarize(values):
    """(n, mean, std, min, max) of a list of numbers (std: population, 0 for one value)."""
    a = np.asarray(values, dtype=np.float64)
    return len(a), float(a.mean()), float(a.std()), float(a.min()), float(a.max())


def _cell(values):
    if not values:
        return "not run"
    n, mean, std, lo, hi = summarize(values)
    return f"{mean:.3f} ± {std:.3f} ({lo:.3f}-{hi:.3f}, n={n})"


def order_blind_ceiling(num_pairs, seq_len, vocab_size, batches=20, seed=0):
    """The accuracy of the best answer that knows, for the asked key, the values it was given
    but not their order (the most frequent one): what a state that is a plain sum of its writes
    could reach if it read that sum perfectly. Measured on the task's own data."""
    rng = np.random.default_rng([seed, 99])
    hits, total = 0.0, 0
    V, P, T = vocab_size, num_pairs, seq_len
    for _ in range(batches):
        inputs, targets = tasks.latest_recall(rng, 64, seq_len=T, num_pairs=P, vocab_size=V)
        start = (T - P) % 2
        for inp, tgt in zip(inputs, targets):
            keys, values = inp[start:T - P:2], inp[start + 1:T - P:2]
            for q, answer in zip(inp[T - P:] - V // 4, tgt[T - P:]):
                given = values[keys == q]
                counts = np.bincount(given)
                best = np.flatnonzero(counts == counts.max())
                hits += (answer in best) / best.size  # ties: a fair guess among the best
                total += 1
    return hits / total


def report(out, results=None, gates=GATES, head_dims=HEAD_DIMS, num_pairs=NUM_PAIRS,
           steps=BASE["steps"]):
    """The two tables as Markdown text, from the finished runs in ``out`` of ``steps`` steps."""
    results = load_results(out) if results is None else results
    results = [r for r in results if r["run"]["steps"] == steps]
    lines = []
    if not results:
        return "no finished runs in " + out + "\n"
    steps = sorted({r["run"]["steps"] for r in results})
    train_len = results[0]["run"]["seq_len"]
    vocab = results[0]["run"]["vocab_size"]
    by = {}
    for r in results:
        run = r["run"]
        by.setdefault((run["gate"], run["head_dim"], run["num_pairs"]), []).append(r)
    lines.append(f"Capacity: held-out accuracy at T = {train_len}, mean ± std (min-max, n "
                 f"seeds); steps {steps}")
    lines.append("")
    head = "| K | gate | " + " | ".join(f"P = {P}" for P in num_pairs) + " | CPU s per run |"
    lines += [head, "|" + " --- |" * (3 + len(num_pairs))]
    for K in head_dims:
        for g in gates:
            cells, cpu = [], []
            for P in num_pairs:
                rs = by.get((g, K, P), [])
                cells.append(_cell([r["accuracy"] for r in rs]))
                cpu += [r["cpu_sec"] for r in rs]
            cpu_text = f"{np.mean(cpu):.0f}" if cpu else "-"
            lines.append(f"| {K} | {g} | " + " | ".join(cells) + f" | {cpu_text} |")
    lines.append("")
    lines.append("Order-blind ceiling (the best a state that sums its writes could do, measured "
                 "on the data): " + ", ".join(
                     f"P = {P}: {order_blind_ceiling(P, train_len, vocab):.3f}"
                     for P in num_pairs))
    lines.append("")
    K, P = LENGTH_CELL["head_dim"], LENGTH_CELL["num_pairs"]
    lengths = [f * train_len for f in LENGTH_FACTORS]
    lines.append(f"Length: K = {K}, P = {P}, trained at T = {train_len}, evaluated with the "
                 f"recurrent form")
    lines.append("")
    lines += ["| gate | " + " | ".join(f"T = {t}" for t in lengths) + " |",
              "|" + " --- |" * (1 + len(lengths))]
    for g in gates:
        rs = by.get((g, K, P), [])
        lines.append(f"| {g} | " + " | ".join(
            _cell([r["recurrent"][str(t)][1] for r in rs if str(t) in r["recurrent"]])
            for t in lengths) + " |")
    lines.append("")
    lines.append("Paired by seed (the same seed gives every gate the same training and held-out "
                 "data): in how many seeds the first gate beat the second")
    lines.append("")
    lines += ["| K | P | " + " | ".join(f"{a} > {b}" for a, b in PAIRS) + " |",
              "|" + " --- |" * (2 + len(PAIRS))]
    for K in head_dims:
        for P in num_pairs:
            acc = {g: {r["run"]["seed"]: r["accuracy"] for r in by.get((g, K, P), [])}
                   for g in gates}
            cells = []
            for a, b in PAIRS:
                seeds = sorted(set(acc.get(a, {})) & set(acc.get(b, {})))
                wins = sum(acc[a][s] > acc[b][s] for s in seeds)
                cells.append(f"{wins} of {len(seeds)}" if seeds else "-")
            lines.append(f"| {K} | {P} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Commands (seed S = 0 .. n-1; one row per cell):")
    lines.append("")
    seen = set()
    for r in sorted(results, key=lambda r: (r["run"]["head_dim"], r["run"]["num_pairs"],
                                            GATES.index(r["run"]["gate"]))):
        run = r["run"]
        key = (run["gate"], run["head_dim"], run["num_pairs"])
        if key in seen:
            continue
        seen.add(key)
        lines.append(f"    {command(dict(run, seed='S'), shown_out(out))}")
    lines.append("")
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(prog="python3 experiments/gates.py", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=os.path.join("runs", "gates"), help="folder of the runs")
    p.add_argument("--seeds", type=int, default=5, help="seeds per cell")
    p.add_argument("--steps", type=int, default=BASE["steps"],
                   help="training steps of every run (a longer budget is a separate set of "
                        "runs, named by its steps; the tables show one budget at a time)")
    p.add_argument("--gates", nargs="+", default=list(GATES), choices=GATES,
                   help="train only these gate variants")
    p.add_argument("--report", action="store_true", help="print the tables only, train nothing")
    p.add_argument("--evaluate", metavar="CHECKPOINT", default=None,
                   help="evaluate one trained checkpoint at --seq_len with --form, then stop")
    p.add_argument("--seq_len", type=int, default=256, help="with --evaluate: the length")
    p.add_argument("--form", default="recurrent", choices=["chunk", "parallel", "recurrent"],
                   help="with --evaluate: the form")
    p.add_argument("--forget_gates", nargs=2, metavar=("CHECKPOINT", "CSV"), default=None,
                   help="write the forget gates of a trained model over one sequence to CSV "
                        "(the data of docs/figures/forget-gates.svg), then stop")
    p.add_argument("--num_pairs", type=int, nargs="+", default=list(NUM_PAIRS),
                   help="train only the cells with these numbers of keys (the tables still "
                        "show every cell, 'not run' where nothing finished)")
    p.add_argument("--head_dims", type=int, nargs="+", default=list(HEAD_DIMS),
                   help="train only the cells with these head sizes")
    p.add_argument("--tiny", action="store_true",
                   help="a seconds-long smoke version (3 steps, hidden 16, 1 gate pair, 1 seed)")
    return p


def main(argv=None, log=print):
    args = build_parser().parse_args(argv)
    if args.seeds < 1:
        raise SystemExit("--seeds: expected an integer >= 1")
    if args.evaluate:
        loss, acc = evaluate_checkpoint(args.evaluate, args.seq_len, args.form)
        log(f"{args.evaluate} at T = {args.seq_len} ({args.form}): accuracy {acc:.4f}, loss "
            f"{loss:.4f}")
        return {"loss": loss, "accuracy": acc}
    if args.forget_gates:
        rows = write_forget_gates(*args.forget_gates)
        log(f"wrote {args.forget_gates[1]}: {len(rows)} tokens")
        return rows
    grid = {}
    overrides = {"steps": args.steps} if args.steps != BASE["steps"] else {}
    if args.tiny:
        grid = {"gates": ("vector", "none"), "head_dims": (16,), "num_pairs": (8,)}
        overrides = {"steps": 3, "hidden": 16, "warmup": 1, "batch_size": 4, "eval_batches": 1}
    if not args.report:
        train_grid = dict(grid) or {"num_pairs": tuple(args.num_pairs),
                                    "head_dims": tuple(args.head_dims),
                                    "gates": tuple(args.gates)}
        runs = plan(args.seeds, overrides, **train_grid)
        for i, run in enumerate(runs):
            folder_done = os.path.isfile(os.path.join(args.out, run_name(run), RESULT))
            if folder_done:
                continue
            t0 = time.perf_counter()
            result = train_one(run, args.out)
            if result is None:
                continue
            log(f"[{i + 1}/{len(runs)}] {run_name(run)}: accuracy {result['accuracy']:.4f} "
                f"({time.perf_counter() - t0:.0f} s)")
            write_csv(args.out, load_results(args.out))
    write_csv(args.out, load_results(args.out))
    text = report(args.out, steps=overrides.get("steps", BASE["steps"]), **grid)
    log(text)
    return text


if __name__ == "__main__":
    env = data_parallel.process_environment(os.environ)
    if env != dict(os.environ):
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    main()
