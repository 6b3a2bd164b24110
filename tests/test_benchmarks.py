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
