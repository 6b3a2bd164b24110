"""The benchmark scripts still run (figures are theirs to print; nothing here is timed)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script, *args):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_train_step_prints_a_row_per_config_and_thread_count():
    out = _run("train_step.py", "--configs", "small", "--threads", "1", "--repeats", "1")
    assert out.startswith("machine: ")
    row = re.search(r"^small\s+1\s+([\d.]+)\s+([\d.]+)\s+([\d,]+)\s+([\d.]+)$", out, re.M)
    assert row is not None, out
    low, median = float(row[1]), float(row[2])
    assert 0 < low <= median


def test_train_step_breakdown_parts_add_up():
    """--breakdown: the means of a step's parts add up to the step's mean, each shard's waiting
    is its wall time minus its CPU time, and no part is longer than what contains it."""
    out = _run("train_step.py", "--configs", "small", "--threads", "2", "--repeats", "2",
               "--breakdown")
    assert "breakdown, small, 2 threads, 2 steps: ms per step" in out, out
    rows = {m[1].strip(): tuple(map(float, m.group(2, 3, 4))) for m in re.finditer(
        r"^(\S.*?|  \S.*?)\s+(-?[\d.]+)\s+(-?[\d.]+)\s+(-?[\d.]+)$", out, re.M)}
    parts = ["before the shards", "the shards beside each other",
             "after: weighting, shard sum, logits", "clip", "AdamW"]
    shards = ["shard 0 (32 rows) beside: wall", "shard 1 (32 rows) beside: wall"]
    for label in ["2-thread step", *parts, *shards, "imbalance (last end - first end)",
                  "1-thread step", "one row", "two rows", "fixed cost of a shard: 2 x one - two"]:
        assert label in rows, (label, out)
    mean = {label: values[2] for label, values in rows.items()}
    for label, (low, median, average) in rows.items():
        assert low <= median and low <= average + 0.01, (label, out)
        if not label.startswith("fixed cost"):  # (a difference of two timings)
            assert low >= -0.01, (label, out)  # waiting: wall minus CPU, zero at best
    assert abs(sum(mean[p] for p in parts) - mean["2-thread step"]) <= 0.03, out
    for i, label in enumerate(shards):
        cpu, waiting = mean[f"shard {i} beside: its CPU"], mean[f"shard {i} beside: waiting "
                                                               f"(wall - CPU)"]
        assert abs(mean[label] - cpu - waiting) <= 0.02, out
        assert mean[label] <= mean["the shards beside each other"] + 0.01, out
        assert mean[f"shard {i} alone: wall"] > 0 and f"shard {i} alone: its CPU" in mean, out
    assert mean["imbalance (last end - first end)"] <= mean["the shards beside each other"], out
    assert abs(2 * mean["one row"] - mean["two rows"]
               - mean["fixed cost of a shard: 2 x one - two"]) <= 0.02, out


def test_forms_prints_the_chunk_form():
    out = _run("forms.py", "--T", "16", "--forms", "chunk", "--dtypes", "float64",
               "--repeats", "1", "--B", "1", "--H", "1", "--K", "4", "--V", "4")
    assert re.search(r"^chunk\s+float64\s+16\s", out, re.M), out


def test_core_prints_a_row_per_gate_strength():
    out = _run("core.py", "--gates", "init", "strong", "--T", "128", "--repeats", "1")
    for gates in ("init", "strong"):
        row = re.search(rf"^{gates}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
        assert row is not None, out
        assert 0 < float(row[1]) <= float(row[2])


def test_gemm_prints_a_row_per_shape():
    out = _run("gemm.py", "--rows", "64", "--shapes", "64x16", "16x64", "--repeats", "1")
    for shape in ("64x16", "16x64"):
        row = re.search(rf"^{shape}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+\S+$", out, re.M)
        assert row is not None, out
        assert all(float(row[i]) >= 0 for i in (1, 2, 3))
