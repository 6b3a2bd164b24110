"""Smoke test of experiments/gates.py (the gate-variant table): a seconds-long version of the
grid trains, writes its CSV, skips finished runs when run again, and evaluates at other
lengths. The real table takes an hour of CPU and is not run here (docs/experiments.md)."""

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gates():
    spec = importlib.util.spec_from_file_location("gates", ROOT / "experiments" / "gates.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_grid_runs_resumes_and_reports(gates, tmp_path):
    out = str(tmp_path / "runs")
    lines = []
    text = gates.main(["--tiny", "--seeds", "1", "--out", out], log=lines.append)
    trained = [line for line in lines if line.startswith("[")]
    assert len(trained) == 2  # vector and none, one seed each
    with open(tmp_path / "runs" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # per run: train.py's own held-out evaluation, then the recurrent form at T, 2T, 4T
    assert sorted((r["gate"], r["form"], int(r["eval_len"])) for r in rows) == sorted(
        (g, form, T) for g in ("vector", "none")
        for form, T in [("chunk", 64), ("recurrent", 64), ("recurrent", 128),
                        ("recurrent", 256)])
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0
        assert r["command"].startswith("python -m gla_np.train --task latest_recall")
        assert f"--seed {r['seed']}" in r["command"]
    # the same model, chunked at T (train.py) and recurrent at T: the same held-out loss
    for gate in ("vector", "none"):
        loss = {r["form"]: float(r["loss"]) for r in rows
                if r["gate"] == gate and int(r["eval_len"]) == 64}
        assert loss["recurrent"] == pytest.approx(loss["chunk"], rel=1e-4)
    assert "| 16 | vector |" in text and "n=1" in text
    # run again: every run is finished, nothing is trained
    again = []
    gates.main(["--tiny", "--seeds", "1", "--out", out], log=again.append)
    assert not [line for line in again if line.startswith("[")]
    # and the forget gates of the trained vector model: one row per token, K values in (0, 1]
    ck = tmp_path / "runs" / "vector-K16-P8-T64-s3-seed0" / "checkpoint.npz"
    table = gates.forget_gate_rows(str(ck))
    assert len(table) == 64
    kept = np.array([[float(v) for k, v in row.items() if k.startswith("keep_")]
                     for row in table])
    assert kept.shape == (64, 16) and ((kept > 0) & (kept <= 1)).all()
    assert [row["role"] for row in table[-8:]] == ["query"] * 8


def test_order_blind_ceiling(gates):
    # every key written exactly once (T = 3P): the order does not matter, the ceiling is 1
    assert gates.order_blind_ceiling(4, 12, 32, batches=1) == 1.0
    # keys rewritten: knowing the values but not their order, some answers must be guesses
    assert gates.order_blind_ceiling(2, 40, 32, batches=1) < 0.8


def test_plan_puts_the_length_cell_first_and_has_every_cell(gates):
    runs = gates.plan(5)
    assert len(runs) == 5 * len(gates.GATES) * len(gates.HEAD_DIMS) * len(gates.NUM_PAIRS)
    first = runs[:5 * len(gates.GATES)]
    assert all(gates.is_length_cell(r) for r in first)
    assert len({gates.run_name(r) for r in runs}) == len(runs)
    # every option is pinned: a later change of train.py's defaults cannot change the table
    assert {r["lr"] for r in runs} == {3e-3} and {r["steps"] for r in runs} == {600}
