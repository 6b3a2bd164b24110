"""Draw the figures of the docs as SVG, with NumPy and string formatting only (no plotting library).

    python3 docs/figures/make_figures.py                  # every figure in docs/figures/
    python3 docs/figures/make_figures.py --curve runs/a/metrics.csv --out runs/a/curve.svg
                                                          # the training curve of any run

The figures:

- ``chunk-tiles.svg``: one chunk's C x C score matrix halved down to tiles (the pairs across the
  halves of each block, one matmul per level, each block with its reference row p; the tiles on
  the diagonal elementwise in log space; the pairs u = t; the future pairs never formed), with a
  float32 example of the naive factor overflowing where the halving's factors do not (the
  numbers are computed here, not typed in).
- ``windows.svg``: which pairs (t, u) a row r lies between (the rectangle t >= r > u), and the
  read, write and carry windows of a chunk that hold row r: the picture behind the gate gradient
  of the parallel and chunked backwards.
- ``training-curve.svg``: loss and accuracy against step, drawn from a run's ``metrics.csv``
  (``python -m gla_np.train`` writes one); the committed figure is drawn from
  ``docs/figures/data/mqar-default-metrics.csv``, the metrics of the default run.
- ``text-training-curve.svg``: the same for the text run of docs/generation.md, from
  ``docs/figures/data/text-default-metrics.csv``.
- ``generation.svg``: time per generated token and memory per sequence against the prefix
  length, the state against re-running the chunked form and against a softmax-attention KV
  cache, from ``docs/figures/data/generation.csv`` (``benchmarks/generate.py --csv`` writes it).

The output is deterministic: running the script again rewrites the same bytes, and
tests/test_docs.py checks that the committed figures are what the script draws.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_METRICS = HERE / "data" / "mqar-default-metrics.csv"

FONT = "font-family=\"DejaVu Sans, Arial, sans-serif\""
COLORS = {
    "diag": "#f9cb9c",  # tiles: elementwise, log space
    "self": "#b6d7a8",  # u = t, no gate
    "future": "#eeeeee",  # u > t, never formed
    "hold": "#3d85c6",  # windows that hold row r
    "miss": "#d9d9d9",  # windows that do not
    "loss": "#cc4125",
    "acc": "#3d85c6",
}
LEVEL_COLORS = ["#6fa8dc", "#9fc5e8", "#cfe2f3", "#e4eff9", "#f1f7fc", "#f8fbfe"]  # one matmul each


class Svg:
    """A few SVG primitives; every number is formatted with a fixed precision."""

    def __init__(self, width, height):
        self.width, self.height, self.parts = width, height, []

    def rect(self, x, y, w, h, fill, stroke="none", width=1.0, extra=""):
        self.parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
                          f'fill="{fill}" stroke="{stroke}" stroke-width="{width:.1f}"{extra}/>')

    def line(self, x1, y1, x2, y2, stroke="#000", width=1.0, extra=""):
        self.parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                          f'stroke="{stroke}" stroke-width="{width:.1f}"{extra}/>')

    def polyline(self, points, stroke, width=1.5):
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        self.parts.append(f'<polyline points="{pts}" fill="none" stroke="{stroke}" '
                          f'stroke-width="{width:.1f}"/>')

    def text(self, x, y, s, size=12, anchor="start", weight="normal", fill="#000"):
        s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        self.parts.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" '
                          f'text-anchor="{anchor}" font-weight="{weight}" fill="{fill}" '
                          f'{FONT}>{s}</text>')

    def render(self):
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" '
                f'height="{self.height}" viewBox="0 0 {self.width} {self.height}">')
        return "\n".join([head, f'<rect width="{self.width}" height="{self.height}" '
                                f'fill="#ffffff"/>', *self.parts, "</svg>", ""])


def _e(x):
    """A float32 number as text: 'inf', 'nan' or two significant digits."""
    x = float(x)
    if np.isnan(x):
        return "nan"
    if np.isinf(x):
        return "inf"
    return f"{x:.1e}"


def overflow_example(g=-30.0, t=4, u=2, p=3):
    """Float32 numbers for the tile figure: the naive key factor exp(-b_u) and the halving's.

    Returns a list of text lines, computed (not typed in): b is the chunk-local cumsum of a
    constant gate g per step, the naive factoring multiplies exp(b_t) by exp(-b_u), the halving
    exp(b_t - b_p) by exp(b_p - b_u) with p the last row of the first half of the block whose
    halves separate u and t (rows 0-3 against 4-7 in the figure: t = 4, u = 2, p = 3).
    """
    f32 = np.float32
    b = np.cumsum(np.full(t + 1, g, dtype=f32))  # b_0 .. b_t
    with np.errstate(over="ignore", invalid="ignore"):
        naive_k = np.exp(-b)  # the key-side factor of the naive factoring
        naive = np.exp(b[t]) * np.exp(-b[u])
        tiled_q, tiled_k = np.exp(b[t] - b[p]), np.exp(b[p] - b[u])
        exact = np.exp(b[t] - b[u])
    lines = [f"float32, gate g = {g:g} per step, b = cumsum(g):"]
    lines += [f"naive key factor exp(-b_{i}) = exp({-float(b[i]):g}) = {_e(naive_k[i])}"
              for i in range(t + 1)]
    lines.append(f"naive exp(b_{t}) * exp(-b_{u}) = {_e(np.exp(b[t]))} * {_e(naive_k[u])}"
                 f" = {_e(naive)}")
    lines.append(f"halving exp(b_{t} - b_p) * exp(b_p - b_{u}), p = {p}:")
    lines.append(f"    = {_e(tiled_q)} * {_e(tiled_k)} = {_e(tiled_q * tiled_k)}"
                 f"  (exact {_e(exact)})")
    lines.append("every factor is exp of a number <= 0: never above 1")
    return lines


def _halving_blocks(C, c):
    """The blocks of the halving of one chunk of C rows (C a tile size <= c times 2^levels).

    Returns (level, first, half, p) per block: the block starts at row ``first``, its halves
    have ``half`` rows, and p = first + half - 1 is the last row of its first half; and the
    tile size. Level 1 is the whole chunk.
    """
    blocks, n, level = [], C, 1
    while n > c:
        blocks += [(level, first, n // 2, first + n // 2 - 1) for first in range(0, C, n)]
        n //= 2
        level += 1
    return blocks, n


def chunk_tiles_svg(C=16, c=2, cell=24, example=(4, 2)):
    """One chunk's C x C score matrix A[t, u], halved down to tiles of at most c rows."""
    blocks, tile = _halving_blocks(C, c)
    levels = max(level for level, *_ in blocks)
    left, top = 70, 60
    svg = Svg(left + C * cell + 470, top + C * cell + 90)  # the height is set at the end
    svg.text(left, 24, f"One chunk's scores A[t, u], C = {C} rows, halved down to tiles of "
                       f"c = {c}", size=15, weight="bold")
    svg.text(left + C * cell / 2, top - 12, "key row u  ->", anchor="middle")
    svg.text(left - 6, top - 12, "query t", anchor="end")
    for t in range(C):
        for u in range(C):
            kind = "future" if u > t else "self" if u == t else "diag"  # blocks drawn over
            svg.rect(left + u * cell, top + t * cell, cell, cell, COLORS[kind], "#ffffff", 1.0)
    for level, first, half, p in blocks:  # the pairs across the halves: one matmul each
        x, y, w = left + first * cell, top + (first + half) * cell, half * cell
        svg.rect(x, y, w, w, LEVEL_COLORS[level - 1], "#444", 1.5)
        svg.text(x + w / 2, y + w / 2 + 4, f"p={p}", size=11 if half > 1 else 9,
                 anchor="middle")
    t_ex, u_ex = example  # the pair of the overflow example, ringed in red
    p_ex = next(p for _, first, half, p in blocks if first <= u_ex <= p < t_ex < first + 2 * half)
    svg.rect(left + u_ex * cell + 2, top + t_ex * cell + 2, cell - 4, cell - 4, "none",
             "#cc0000", 2.0)
    for first in range(0, C, tile):  # the tiles on the diagonal: elementwise
        svg.rect(left + first * cell, top + first * cell, tile * cell, tile * cell, "none",
                 "#444", 1.5)
    for i in range(C):
        svg.text(left + (i + 0.5) * cell, top + C * cell + 16, str(i), size=10, anchor="middle")
        svg.text(left - 6, top + (i + 0.5) * cell + 4, str(i), size=10, anchor="end")
    x0, y = left + C * cell + 30, top + 6
    for level in range(1, levels + 1):
        rows = C // 2 ** (level - 1)
        svg.rect(x0, y - 12, 16, 16, LEVEL_COLORS[level - 1], "#888", 1.0)
        svg.text(x0 + 24, y, f"level {level}: {C // rows} block{'s' if rows < C else ''} of "
                             f"{rows} rows" + (", the whole chunk" if rows == C else ""), size=12)
        y += 24
    for line in ["a block's pairs across its halves (t in the second, u in the first)",
                 "with p the last row of its first half: u <= p < t, so both factors of",
                 "(q * exp(b - b_p)) (k * exp(b_p - b))^T are <= 1;",
                 "one batched matmul per level, all blocks of all chunks"]:
        svg.text(x0 + 24, y, line, size=12)
        y += 16
    y += 18
    legend = [
        (COLORS["diag"], f"tiles of {tile} rows, u < t: elementwise, exp(b_t - b_u),",
         "one distance t - u at a time: no one p serves a tile"),
        (COLORS["self"], "u = t: s q_t . k_t, exponent 0, no gate", "(added apart: A_self)"),
        (COLORS["future"], "u > t: never formed, so every exponent is <= 0",
         "(forming them and masking after exp: inf * 0 = nan)"),
    ]
    for color, first, second in legend:
        svg.rect(x0, y - 12, 16, 16, color, "#888", 1.0)
        svg.text(x0 + 24, y, first, size=12)
        svg.text(x0 + 24, y + 16, second, size=12)
        y += 44
    svg.text(x0, y + 4, "Why not one matmul: the naive factoring overflows", size=13,
             weight="bold")
    y += 22
    svg.text(x0, y, f"at the pair ringed in red, t = {t_ex}, u = {u_ex}:", size=12,
             fill="#cc0000")
    y += 17
    for line in overflow_example(t=t_ex, u=u_ex, p=p_ex):
        svg.text(x0 + 24 if line.startswith(" ") else x0, y, line.strip(), size=12)
        y += 17
    svg.height = int(max(y, top + C * cell + 30)) + 10
    return svg.render()


def windows_svg(n=8, r=3, cell=26):
    """Left: the pairs (t, u) whose window u+1..t holds row r. Right: a chunk's read, write and
    carry windows, those holding r in colour."""
    top, left = 70, 60
    width = left + n * cell + 110 + n * cell + 150
    svg = Svg(width, top + (2 * n + 1) * 14 + 3 * 22 + 110)
    svg.text(20, 24, f"Which exponents hold the gate of row r = {r}", size=15, weight="bold")
    svg.text(20, 42, "each exponent sums the gates of a window of rows; dg_r adds the "
             "gradients of the exponents whose window holds r", size=12)
    # left panel: pairs
    svg.text(left + n * cell / 2, top - 10, "key row u  ->", anchor="middle")
    svg.text(left - 8, top - 10, "query t", size=12, anchor="end")
    for t in range(n):
        for u in range(n):
            if u >= t:
                fill = "#ffffff"
            elif t >= r > u:
                fill = COLORS["hold"]
            else:
                fill = COLORS["miss"]
            svg.rect(left + u * cell, top + t * cell, cell, cell, fill, "#bbbbbb", 1.0)
    svg.rect(left, top + r * cell, r * cell, (n - r) * cell, "none", "#cc0000", 2.5)
    for i in range(n):
        svg.text(left - 8, top + (i + 0.7) * cell, str(i), size=10, anchor="end")
        svg.text(left + (i + 0.5) * cell, top + n * cell + 14, str(i), size=10, anchor="middle")
    svg.text(left, top + n * cell + 36, f"past pairs u < t; blue: t >= r > u", size=12)
    svg.text(left, top + n * cell + 52, "(the window u+1..t holds r)", size=12)
    # right panel: strips of one chunk
    x0 = left + n * cell + 110
    bar = 12
    y = top
    svg.text(x0, y - 10, "rows of one chunk  ->", size=12)
    for i in range(n):
        svg.text(x0 + (i + 0.5) * cell, y + 4, str(i), size=10, anchor="middle")
    y += 14
    strips = [
        ("reads of the entering state, window 0..t", "t",
         [(0, t + 1, t >= r) for t in range(n)]),
        ("writes into the leaving state, window u+1..last", "u",
         [(u + 1, n, u < r) for u in range(n)]),
        ("carry of the entering state, window 0..last", "", [(0, n, True)]),
    ]
    for title, letter, bars in strips:
        y += 8
        svg.text(x0, y, title, size=12)
        y += 6
        for index, (a, b, holds) in enumerate(bars):
            if letter:
                svg.text(x0 - 4, y + bar - 2, f"{letter}={index}", size=9, anchor="end",
                         fill="#666")
            if b > a:
                svg.rect(x0 + a * cell + 1, y, (b - a) * cell - 2, bar,
                         COLORS["hold"] if holds else COLORS["miss"])
            else:  # the last row's write: an empty window, exponent 0
                svg.text(x0 + n * cell + 4, y + bar - 2, "empty (exponent 0)", size=9,
                         fill="#666")
            y += bar + 2
        y += 8
    svg.line(x0 + (r + 0.5) * cell, top + 8, x0 + (r + 0.5) * cell, y - 10, "#cc0000", 2.0,
             ' stroke-dasharray="4,3"')
    svg.text(x0 + (r + 0.5) * cell, y + 4, f"row r = {r}", size=12, anchor="middle",
             fill="#cc0000")
    y += 24
    for line in ["reads hold r when t >= r:  sum_{t >= r} q * dq_inter",
                 "writes hold r when u < r:  sum_{u < r} k * dk_state",
                 "the carry always holds r:  exp(l_n) rowsum(H_n * E_n)"]:
        svg.text(x0, y, line, size=12)
        y += 16
    return svg.render()


def read_metrics(path):
    """(train steps, train losses, train accuracies, held-out row or None) from a metrics.csv."""
    steps, losses, accs, heldout = [], [], [], None
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == "train":
                steps.append(int(row["step"]))
                losses.append(float(row["loss"]))
                accs.append(float(row["accuracy"]))
            elif row["split"] == "heldout":
                heldout = (int(row["step"]), float(row["loss"]), float(row["accuracy"]))
    if not steps:
        raise ValueError(f"{path}: no train rows")
    return np.array(steps), np.array(losses), np.array(accs), heldout


def curve_svg(path, title=None):
    """Loss (left axis) and accuracy (right axis) against step, from a run's metrics.csv."""
    steps, losses, accs, heldout = read_metrics(path)
    W, H, left, right, top, bottom = 720, 360, 70, 70, 50, 50
    pw, ph = W - left - right, H - top - bottom
    svg = Svg(W, H)
    svg.text(left, 26, title or f"Training curve: {Path(path).name}", size=15, weight="bold")
    smax = float(steps.max())
    lmax = float(np.ceil(max(losses.max(), 1e-9)))

    def x(step):
        return left + pw * step / smax

    def y_loss(value):
        return top + ph * (1 - value / lmax)

    def y_acc(value):
        return top + ph * (1 - value)

    svg.rect(left, top, pw, ph, "none", "#888", 1.0)
    for i in range(5):  # grid and both axes' labels
        frac = i / 4
        yy = top + ph * (1 - frac)
        svg.line(left, yy, left + pw, yy, "#eeeeee", 1.0)
        svg.text(left - 6, yy + 4, f"{lmax * frac:.1f}", size=11, anchor="end",
                 fill=COLORS["loss"])
        svg.text(left + pw + 6, yy + 4, f"{frac:.2f}", size=11, fill=COLORS["acc"])
    for i in range(6):
        s = smax * i / 5
        svg.text(x(s), top + ph + 16, f"{s:.0f}", size=11, anchor="middle")
    svg.text(left + pw, H - 10, "step", size=12, anchor="end")
    svg.text(left - 50, top - 8, "loss", size=12, fill=COLORS["loss"])
    svg.text(left + pw + 10, top - 8, "accuracy", size=12, fill=COLORS["acc"])
    svg.polyline([(x(s), y_loss(v)) for s, v in zip(steps, losses)], COLORS["loss"])
    svg.polyline([(x(s), y_acc(v)) for s, v in zip(steps, accs)], COLORS["acc"])
    if heldout is not None:
        s, hl, ha = heldout
        svg.rect(x(s) - 4, y_acc(ha) - 4, 8, 8, COLORS["acc"])
        svg.text(x(s) - 8, y_acc(ha) + 18, f"held-out accuracy {ha:.3f}", size=11,
                 anchor="end", fill=COLORS["acc"])
    svg.text(left, H - 10, "train loss and accuracy at the logged steps (one batch each)",
             size=11, fill="#666")
    return svg.render()


# --- generation (benchmarks/generate.py) -------------------------------------------------------

TEXT_METRICS = HERE / "data" / "text-default-metrics.csv"
GENERATION = HERE / "data" / "generation.csv"
GEN_COLORS = {"state": "#3d85c6", "grows": "#cc4125"}


def read_generation(path):
    """The columns of benchmarks/generate.py's CSV as arrays, by name."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return {name: np.array([float(r[name]) for r in rows]) for name in rows[0]}


def _log_panel(svg, x0, y0, pw, ph, xs, series, title, unit):
    """One log-log panel: series is [(label, ys, color)] against xs (powers of two)."""
    ys_all = np.concatenate([ys for _, ys, _ in series])
    lo = 10.0 ** np.floor(np.log10(ys_all.min()))
    hi = 10.0 ** np.ceil(np.log10(ys_all.max()))
    lx0, lx1 = np.log2(xs[0]), np.log2(xs[-1])

    def px(x):
        return x0 + pw * (np.log2(x) - lx0) / (lx1 - lx0)

    def py(y):
        return y0 + ph * (1 - (np.log10(y) - np.log10(lo)) / (np.log10(hi) - np.log10(lo)))

    svg.text(x0 + pw / 2, y0 - 10, title, size=13, anchor="middle", weight="bold")
    svg.rect(x0, y0, pw, ph, "none", "#888", 1.0)
    decade = lo
    while decade <= hi * 1.0001:
        svg.line(x0, py(decade), x0 + pw, py(decade), "#eeeeee", 1.0)
        svg.text(x0 - 6, py(decade) + 4, f"{decade:g} {unit}", size=11, anchor="end")
        decade *= 10
    for x in xs:
        svg.text(px(x), y0 + ph + 16, f"{int(x)}", size=11, anchor="middle")
    svg.text(x0 + pw / 2, y0 + ph + 34, "prefix length (tokens before the new one)", size=11,
             anchor="middle", fill="#444")
    for label, ys, color in series:
        svg.polyline([(px(x), py(y)) for x, y in zip(xs, ys)], color)
        for x, y in zip(xs, ys):
            svg.rect(px(x) - 3, py(y) - 3, 6, 6, color)
        svg.text(px(xs[-1]) - 4, py(ys[-1]) - 8, label, size=11, anchor="end", fill=color)


def generation_svg(path=GENERATION):
    """Time per new token and memory per sequence against the prefix length (log-log)."""
    g = read_generation(path)
    xs = g["prefix"]
    W, H, left, top, pw, ph, gap = 900, 400, 90, 70, 310, 250, 130
    svg = Svg(W, H)
    svg.text(20, 26, "One more token after a prefix: GLA's fixed-size state against what grows "
             "with the prefix", size=15, weight="bold")
    _log_panel(svg, left, top, pw, ph, xs,
               [("re-run the chunked form", g["rerun_ms"], GEN_COLORS["grows"]),
                ("state: lm.step", g["state_ms"], GEN_COLORS["state"])],
               "time per new token", "ms")
    _log_panel(svg, left + pw + gap, top, pw, ph, xs,
               [("softmax KV cache", g["kv_cache_bytes"] / 1024, GEN_COLORS["grows"]),
                ("GLA state", g["state_bytes"] / 1024, GEN_COLORS["state"])],
               "memory kept per sequence", "KiB")
    svg.text(20, H - 12, "benchmarks/generate.py: batch 1, float32, the default text run's model "
             "(width 64, one layer, K = V = 64); data/generation.csv", size=11, fill="#666")
    return svg.render()


# --- the gate experiments (experiments/gates.py) -------------------------------------------------

GATE_RESULTS = HERE / "data" / "gates-results.csv"
FORGET_GATES = HERE / "data" / "forget-gates.csv"
GATE_COLORS = {"vector": "#cc4125", "scalar": "#e69138", "fixed": "#3d85c6", "none": "#666666"}


def read_gate_results(path):
    """The rows of experiments/gates.py's results.csv, numbers parsed."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for name in ("head_dim", "num_pairs", "seed", "train_len", "eval_len"):
                row[name] = int(row[name])
            row["accuracy"] = float(row["accuracy"])
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _gate_panel(svg, x0, y0, pw, ph, xs, xlabels, series, title, marker=None):
    """One panel: accuracy (0..1) against categorical x, per gate the mean over seeds (line and
    dots) and the range over seeds (a vertical bar). series: gate -> {x: [accuracies]}."""
    svg.text(x0 + pw / 2, y0 - 10, title, size=13, anchor="middle", weight="bold")
    svg.rect(x0, y0, pw, ph, "none", "#888", 1.0)
    for i in range(5):
        yy = y0 + ph * (1 - i / 4)
        svg.line(x0, yy, x0 + pw, yy, "#eeeeee", 1.0)
        svg.text(x0 - 6, yy + 4, f"{i / 4:.2f}", size=11, anchor="end")

    def px(i):
        return x0 + pw * (i + 0.5) / len(xs)

    for i, label in enumerate(xlabels):
        svg.text(px(i), y0 + ph + 16, label, size=11, anchor="middle")
    if marker is not None:  # a dashed line between two categories (where x passes the state)
        mx = x0 + pw * marker / len(xs)
        svg.line(mx, y0, mx, y0 + ph, "#999", 1.0, ' stroke-dasharray="4,3"')
    for offset, (gate, by_x) in enumerate(series.items()):
        color = GATE_COLORS[gate]
        dx = (offset - (len(series) - 1) / 2) * 5  # side by side, so the bars do not overlap
        points = []
        for i, x in enumerate(xs):
            accs = by_x.get(x, [])
            if not accs:
                continue
            cx = px(i) + dx
            lo, hi, mean = min(accs), max(accs), float(np.mean(accs))
            svg.line(cx, y0 + ph * (1 - lo), cx, y0 + ph * (1 - hi), color, 1.5)
            svg.rect(cx - 3, y0 + ph * (1 - mean) - 3, 6, 6, color)
            points.append((cx, y0 + ph * (1 - mean)))
        if len(points) > 1:
            svg.polyline(points, color, 1.5)


def _gate_legend(svg, x, y, seeds_text):
    for gate, color in GATE_COLORS.items():
        svg.rect(x, y - 10, 12, 12, color)
        svg.text(x + 18, y, f"{gate} gate", size=12)
        x += 110
    svg.text(x + 10, y, seeds_text, size=11, fill="#666")


def _seeds_text(rows):
    n = sorted({len({r["seed"] for r in rows if (r["gate"], r["head_dim"], r["num_pairs"]) == c})
                for c in {(r["gate"], r["head_dim"], r["num_pairs"]) for r in rows}})
    return (f"dot: mean over {n[0]} seeds; bar: min to max" if len(n) == 1 else
            f"dot: mean over {n[0]} to {n[-1]} seeds; bar: min to max")


def gates_capacity_svg(path=GATE_RESULTS):
    """Held-out accuracy against the number of keys P, one panel per head size K."""
    rows = [r for r in read_gate_results(path) if r["eval_len"] == r["train_len"]
            and r["form"] != "recurrent"]
    heads = sorted({r["head_dim"] for r in rows})
    pairs = sorted({r["num_pairs"] for r in rows})
    W, H, left, top, pw, ph, gap = max(700, 140 + 330 * len(heads)), 400, 70, 70, 280, 240, 50
    svg = Svg(W, H)
    T = rows[0]["train_len"]
    svg.text(20, 26, f"Latest-value recall: held-out accuracy against the number of keys P "
             f"(T = {T})", size=15, weight="bold")
    for j, K in enumerate(heads):
        series = {}
        for gate in GATE_COLORS:
            by_p = {}
            for r in rows:
                if r["gate"] == gate and r["head_dim"] == K:
                    by_p.setdefault(r["num_pairs"], []).append(r["accuracy"])
            series[gate] = by_p
        marker = next((i for i, P in enumerate(pairs) if P > K), None)
        _gate_panel(svg, left + j * (pw + gap), top, pw, ph, pairs,
                    [f"P = {P}" for P in pairs], series,
                    f"head size K = {K} (state {K} x {K})", marker)
    svg.text(left, top + ph + 40, "dashed line: P passes K, more keys than the state has "
             "independent directions", size=11, fill="#666")
    _gate_legend(svg, left, H - 24, _seeds_text(rows))
    return svg.render()


def gates_length_svg(path=GATE_RESULTS):
    """Accuracy against the evaluation length, for the runs evaluated at several lengths."""
    rows = [r for r in read_gate_results(path) if r["form"] == "recurrent"]
    lengths = sorted({r["eval_len"] for r in rows})
    K, P, T = rows[0]["head_dim"], rows[0]["num_pairs"], rows[0]["train_len"]
    W, H, left, top, pw, ph = 640, 400, 70, 70, 330, 240
    svg = Svg(W, H)
    svg.text(20, 26, f"Held-out accuracy, trained at T = {T}, evaluated longer (K = {K}, "
             f"P = {P} keys)", size=15, weight="bold")
    series = {}
    for gate in GATE_COLORS:
        by_t = {}
        for r in rows:
            if r["gate"] == gate:
                by_t.setdefault(r["eval_len"], []).append(r["accuracy"])
        series[gate] = by_t
    _gate_panel(svg, left, top, pw, ph, lengths, [f"T = {t}" for t in lengths], series,
                "recurrent form, same weights")
    y = top + 20
    for line in ["Longer sequences: more writes of the",
                 "same keys before the questions",
                 f"(T = {lengths[-1]}: {(lengths[-1] - P) // 2} writes of {P} keys)."]:
        svg.text(left + pw + 20, y, line, size=11, fill="#444")
        y += 16
    _gate_legend(svg, 20, H - 24, "")
    svg.text(20, H - 6, _seeds_text(rows), size=11, fill="#666")
    return svg.render()


def read_forget_gates(path):
    """(labels, roles, kept) from forget-gates.csv: kept is (T, K), exp(g) per token, channel."""
    labels, roles, kept = [], [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            labels.append(row["label"])
            roles.append(row["role"])
            kept.append([float(row[name]) for name in row if name.startswith("keep_")])
    return labels, roles, np.array(kept)


def _forget_color(kept, floor):
    """White where the channel keeps everything (exp(g) = 1), dark red at ``floor`` and below."""
    f = float(np.clip((1 - kept) / (1 - floor), 0, 1))
    r, g, b = (int(round(255 + (end - 255) * f)) for end in (0x99, 0x00, 0x00))
    return f"#{r:02x}{g:02x}{b:02x}"


def forget_gates_svg(path=FORGET_GATES, cell=12):
    """A heatmap of a trained model's forget gates over one sequence: channels down, tokens
    across, red where the channel forgets (exp(g) small), white where it keeps (near 1)."""
    labels, roles, kept = read_forget_gates(path)
    T, K = kept.shape
    floor = min(0.9, float(np.floor(kept.min() * 10) / 10))  # the darkest colour's value
    left, top = 80, 70
    W, H = left + T * cell + 40, top + K * cell + 150
    svg = Svg(W, H)
    svg.text(20, 26, "Inside a trained model: how much each channel of the state keeps at each "
             "token", size=15, weight="bold")
    svg.text(20, 44, "vector gate, exp(g) per channel (row) and token (column); red = forget, "
             "white = keep", size=12)
    for t in range(T):
        for c in range(K):
            svg.rect(left + t * cell, top + c * cell, cell, cell, _forget_color(kept[t, c], floor))
    svg.rect(left, top, T * cell, K * cell, "none", "#888", 1.0)
    for c in range(K):
        svg.text(left - 6, top + (c + 0.8) * cell, str(c), size=8, anchor="end")
    svg.text(left - 30, top - 8, "channel", size=11)
    role_color = {"key": "#cc4125", "value": "#888888", "query": "#3d85c6", "blank": "#cccccc"}
    for t, (label, role) in enumerate(zip(labels, roles)):
        x = left + (t + 0.5) * cell
        svg.text(x, top + K * cell + 12, label, size=8, anchor="middle", fill=role_color[role])
    y = top + K * cell + 40
    svg.text(left, y, "tokens: key letters (red) are writes of that key, the grey dot after "
             "each is its value, blue letters at the end are the questions", size=11)
    svg.text(left, y + 16, "(which key each channel serves is the model's own choice; the "
             "letters name the keys in order of first appearance)", size=11)
    for i in range(5):
        v = floor + (1 - floor) * i / 4
        x = left + i * 70 + (40 if i else 0)
        svg.rect(x, y + 34, 14, 14, _forget_color(v, floor), "#888")
        svg.text(x + 20, y + 45, f"{v:.2f}" + (" or less" if i == 0 else ""), size=11)
    svg.text(left + 380, y + 45, "exp(g): the fraction of the channel's memory kept", size=11)
    return svg.render()

def write(path, text):
    """Write text to path via a temporary file, so a figure is never half-written."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--curve", help="draw only the training curve of this metrics.csv")
    parser.add_argument("--out", help="with --curve: the SVG file to write")
    parser.add_argument("--folder", default=str(HERE), help="where to write all figures")
    args = parser.parse_args(argv)
    if args.curve:
        out = args.out or str(Path(args.curve).with_suffix(".svg"))
        write(out, curve_svg(args.curve))
        print(f"wrote {out}")
        return [out]
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = {"chunk-tiles.svg": chunk_tiles_svg(), "windows.svg": windows_svg(),
               "training-curve.svg": curve_svg(DEFAULT_METRICS, "MQAR, the default run of "
                                               "python -m gla_np.train"),
               "gates-capacity.svg": gates_capacity_svg(), "gates-length.svg": gates_length_svg(),
               "forget-gates.svg": forget_gates_svg(),
               "text-training-curve.svg": curve_svg(TEXT_METRICS, "Characters of Python's "
                                                    "pydoc_data/topics.py: python -m gla_np.train "
                                                    "--task text"),
               "generation.svg": generation_svg()}
    written = []
    for name, text in figures.items():
        write(folder / name, text)
        written.append(str(folder / name))
        print(f"wrote {folder / name}")
    return written


if __name__ == "__main__":
    main()
