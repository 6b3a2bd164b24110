"""The supported range, tested: README's test command on the oldest and newest Python and NumPy.

Run from the repository root (``.ci/run`` does): ``python3 .ci/matrix.py``. Standard library
only; it finds Pythons on the machine itself (pyenv's versions, ``python3.N`` on PATH,
``/usr/bin/python3``) and reads the supported range from setup.cfg:

- ``python_requires`` and the ``Programming Language :: Python :: 3.N`` classifiers give the
  lowest and highest supported Python;
- the ``numpy>=X; python_version ...`` lines of ``install_requires`` give, per Python, the oldest
  NumPy allowed (the oldest with wheels for it).

Rows, each in a fresh virtual environment under a temporary folder (removed at the end):

1. the lowest supported Python found, with its oldest NumPy;
2. the highest supported Python found, with its oldest NumPy;
3. the same Python with the newest NumPy (whatever pip picks in a fresh environment);
4. Debian's (or any distribution's) own ``/usr/bin/python3``, with the newest NumPy.

Each row runs README's test command with that Python (``python -m venv``, ``pip install -q -e
".[test]"``, pinning NumPy with a constraints file where the row says so, ``pytest -q``), checks
that the NumPy it got is the one it asked for, then starts README's training command for three
steps. A row the machine cannot run (no such Python, no venv module) is printed as MISSING, never
passed silently; any failure makes the exit status 1. pip's cache is used as usual, so a second
run downloads nothing. First of all it checks that ``.ci/run``'s test command is README's, verbatim.
"""

from __future__ import annotations

import configparser
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = ("import sys, os, sysconfig; print('%d.%d.%d' % sys.version_info[:3]); "
         "print(os.path.realpath(sys.base_prefix)); "
         "print(os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))")
TRAIN_SMOKE = ["-m", "gla_np.train", "--steps", "3", "--warmup", "1", "--eval_batches", "1",
               "--log_every", "1"]


def version_tuple(text):
    """'3.10.13' -> (3, 10, 13)."""
    return tuple(int(part) for part in text.split("."))


def same_release(a, b):
    """'1.23' and '1.23.0' name the same release (trailing zeros do not count, as for pip)."""
    a, b = list(version_tuple(a)), list(version_tuple(b))
    width = max(len(a), len(b))
    return a + [0] * (width - len(a)) == b + [0] * (width - len(b))


def read_setup_cfg():
    """(lowest (3, N), highest (3, N), [(op, (3, N), numpy_version), ...]) from setup.cfg."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    m = re.fullmatch(r">=\s*(3\.\d+)", cfg["options"]["python_requires"].strip())
    if not m:
        sys.exit(f"setup.cfg: python_requires: expected '>=3.N', got "
                 f"{cfg['options']['python_requires']!r}")
    lowest = version_tuple(m.group(1))
    tagged = re.findall(r"Programming Language :: Python :: (3\.\d+)\s*$",
                        cfg["metadata"]["classifiers"], flags=re.M)
    if not tagged:
        sys.exit("setup.cfg: classifiers: expected 'Programming Language :: Python :: 3.N' lines")
    highest = max(version_tuple(v) for v in tagged)
    rules = []
    for line in cfg["options"]["install_requires"].strip().splitlines():
        line = line.strip()
        if not line.startswith("numpy"):
            continue
        m = re.fullmatch(r'numpy>=([\d.]+);\s*python_version\s*(<|==|>=)\s*"(3\.\d+)"', line)
        if not m:
            sys.exit(f"setup.cfg: install_requires: cannot read {line!r}; expected "
                     f"'numpy>=X; python_version OP \"3.N\"'")
        rules.append((m.group(2), version_tuple(m.group(3)), m.group(1)))
    return lowest, highest, rules


def oldest_numpy(rules, minor):
    """The ``numpy>=X`` bound that setup.cfg's markers give for Python ``minor`` (3, N)."""
    ops = {"<": lambda a, b: a < b, "==": lambda a, b: a == b, ">=": lambda a, b: a >= b}
    found = [v for op, bound, v in rules if ops[op](minor, bound)]
    if len(found) != 1:
        sys.exit(f"setup.cfg: install_requires: expected exactly one numpy line for Python "
                 f"{minor[0]}.{minor[1]}, found {found}")
    return found[0]


def find_pythons():
    """Every distinct Python interpreter on the machine: {base_prefix: (version, path, managed)}."""
    candidates = []
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates += sorted(glob.glob(os.path.join(pyenv_root, "versions", "*", "bin", "python3")))
    for minor in range(6, 30):
        path = shutil.which(f"python3.{minor}")
        if path:
            candidates.append(path)
    candidates += [p for p in (shutil.which("python3"), "/usr/bin/python3") if p]
    found = {}
    for path in candidates:
        info = probe(path)
        if info:
            found.setdefault(info[0], info[1:])
    return found


def probe(path):
    """(base_prefix, version, path, externally_managed) of the Python at ``path``, or None."""
    try:
        out = subprocess.run([path, "-c", PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None  # e.g. a pyenv shim for a version that is not selected
    version, prefix, managed = out.stdout.split()
    return prefix, version_tuple(version), path, managed == "True"


def run(cmd, timeout=1800):
    """Run ``cmd`` in the repository root; return (returncode, seconds, output)."""
    start = time.monotonic()
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        code, output = out.returncode, out.stdout + out.stderr
    except subprocess.TimeoutExpired as exc:
        code, output = -1, f"{exc.output or ''}{exc.stderr or ''}\ntimed out after {timeout} s"
    return code, time.monotonic() - start, f"$ {' '.join(map(str, cmd))}\n{output}"


def run_row(name, python, numpy_pin, workdir):
    """One row; returns a dict for the table (status PASS, FAIL or MISSING)."""
    row = {"name": name, "python": ".".join(map(str, python[0])), "path": python[1],
           "numpy": "-", "tests": "-", "passed": 0, "failed": 1, "status": "FAIL",
           "install": 0.0, "suite": 0.0, "train": 0.0, "note": ""}
    env_dir = Path(tempfile.mkdtemp(prefix="venv-", dir=workdir))
    py = env_dir / "bin" / "python"
    print(f"--- {name}: {python[1]} (Python {row['python']}), NumPy "
          f"{'==' + numpy_pin if numpy_pin else 'newest'}", flush=True)

    code, seconds, text = run([python[1], "-m", "venv", "--clear", env_dir])
    row["install"] += seconds
    if code != 0:
        row["status"], row["failed"] = "MISSING", 0
        row["note"] = ("no working venv module (Debian/Ubuntu: apt install python3-venv): "
                       + text.strip().splitlines()[-1])
        return row
    install = [py, "-m", "pip", "install", "-q", "-e", ".[test]"]
    if numpy_pin:
        constraints = env_dir / "constraints.txt"
        constraints.write_text(f"numpy=={numpy_pin}\n")
        install += ["-c", constraints]
    code, seconds, text = run(install)
    row["install"] += seconds
    if code != 0:
        row["note"] = "pip install failed"
        print(text, flush=True)
        return row
    code, _, text = run([py, "-c", "import numpy; print(numpy.__version__)"])
    row["numpy"] = text.strip().splitlines()[-1]
    if numpy_pin and not same_release(row["numpy"], numpy_pin):
        row["note"] = f"asked for NumPy {numpy_pin}, got {row['numpy']}"
        return row

    code, seconds, text = run([py, "-m", "pytest", "-q"])
    row["suite"] = seconds
    closing = text.strip().splitlines()[-1].strip("= ")
    row["tests"] = re.sub(r"\s+in [\d.]+s.*$", "", closing)
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|error)", closing)}
    row["passed"] = counts.get("passed", 0)
    row["failed"] = max(1, counts.get("failed", 0) + counts.get("error", 0)) if code else 0
    if code != 0:
        row["note"] = "test suite failed"
        print(text, flush=True)
        return row

    code, seconds, text = run([py, *TRAIN_SMOKE, "--out", env_dir / "run"])
    row["train"] = seconds
    if code != 0 or not (env_dir / "run" / "checkpoint.npz").exists():
        row["note"], row["failed"] = "training command failed", 1
        print(text, flush=True)
        return row
    row["status"] = "PASS"
    return row


def readme_command_is_ci_command():
    """.ci/run must run README's test command verbatim: the line with pytest is in README."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if "-m pytest" in line and not line.lstrip().startswith("#")]
    readme = (ROOT / "README.md").read_text().splitlines()
    return len(lines) == 1 and lines[0] in (line.strip() for line in readme)


def main():
    start = time.monotonic()
    if not readme_command_is_ci_command():
        print("matrix: FAIL: .ci/run's test command is not README's test command, verbatim")
        print("matrix: 0 passed, 1 failed")
        return 1
    lowest, highest, rules = read_setup_cfg()
    pythons = find_pythons()
    supported = sorted((v for v in pythons.values() if lowest <= v[0][:2] <= highest),
                       key=lambda v: v[0])
    print(f"matrix: supported Python {lowest[0]}.{lowest[1]} to {highest[0]}.{highest[1]} "
          f"(setup.cfg); found: "
          + ", ".join(f"{'.'.join(map(str, v[0]))} ({v[1]})"
                      for v in sorted(pythons.values(), key=lambda v: v[0])), flush=True)

    missing, rows_to_run = [], []
    if not supported:
        missing.append(f"no supported Python ({lowest[0]}.{lowest[1]} to "
                       f"{highest[0]}.{highest[1]}) on this machine: nothing tested")
    else:
        low, high = supported[0], supported[-1]
        if low[0][:2] != lowest:
            missing.append(f"lowest supported Python {lowest[0]}.{lowest[1]} not on this "
                           f"machine: tested {'.'.join(map(str, low[0][:2]))} as the lowest")
        if high[0][:2] != highest:
            missing.append(f"highest supported Python {highest[0]}.{highest[1]} not on this "
                           f"machine: tested {'.'.join(map(str, high[0][:2]))} as the highest")
        if low is high:
            missing.append("only one supported Python on this machine: lowest = highest")
        rows_to_run.append(("lowest Python, oldest NumPy", low, oldest_numpy(rules, low[0][:2])))
        if high is not low:
            rows_to_run.append(("highest Python, oldest NumPy", high,
                                oldest_numpy(rules, high[0][:2])))
        rows_to_run.append(("highest Python, newest NumPy", high, None))
    system_info = probe("/usr/bin/python3") if os.path.exists("/usr/bin/python3") else None
    system = pythons.get(system_info[0]) if system_info else None
    if system is None:
        missing.append("no /usr/bin/python3 (a distribution's own Python) on this machine")
    elif rows_to_run and system is rows_to_run[-1][1]:
        print("matrix: /usr/bin/python3 is the highest Python: its row is the one above")
    elif not lowest <= system[0][:2] <= highest:
        missing.append(f"/usr/bin/python3 is Python {'.'.join(map(str, system[0]))}, outside "
                       f"the supported range: not tested")
    else:
        label = "externally managed" if system[2] else "not externally managed"
        rows_to_run.append((f"/usr/bin/python3 ({label}), newest NumPy", system, None))

    workdir = tempfile.mkdtemp(prefix="gla_np-matrix-")
    try:
        rows = [run_row(name, python, pin, workdir) for name, python, pin in rows_to_run]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print("\nmatrix: README's test command in a fresh virtual environment per row, then "
          "3 training steps")
    header = ("row", "Python", "NumPy", "tests", "install", "suite", "train", "status")
    table = [header] + [(r["name"], r["python"], r["numpy"], r["tests"], f"{r['install']:.0f} s",
                         f"{r['suite']:.0f} s", f"{r['train']:.0f} s", r["status"])
                        for r in rows]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    for line in table:
        print("  " + "  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip())
    for r in rows:
        if r["note"]:
            print(f"  {r['status']}: {r['name']}: {r['note']}")
    for note in missing:
        print(f"  MISSING: {note}")
    print(f"  total {time.monotonic() - start:.0f} s")
    # tests passed and failed over all rows; a row that failed outside pytest counts 1 failed
    print(f"matrix: {sum(r['passed'] for r in rows)} passed, {sum(r['failed'] for r in rows)} "
          f"failed")
    return 1 if any(r["status"] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
