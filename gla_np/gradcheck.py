"""The gradient checker: every hand-derived backward in gla_np is tested against it.

For a function with array inputs x_1..x_m and outputs y_1..y_n we draw random upstream
gradients dy_i (never all ones: ones hide transposes and wrong reductions) and define the scalar

    L(x) = sum_i sum(y_i(x) * dy_i).

Its exact gradient with respect to x_j is what ``backward(dy_1, ..., dy_n, cache)`` must return.
We estimate each entry with a centred finite difference

    dL/dx[e] ~= (L(x + h e) - L(x - h e)) / (2 h),

whose truncation error is O(h^2) and whose rounding error is about eps_machine * |L| / h. In
float64 with h = 1e-6 both are near 1e-10 of the gradient's size, so a correct backward shows a
relative error around 1e-9 and a wrong one (a transposed weight, a forgotten fan-out term, a
scale factor applied twice) shows an error of order one. That gap is what makes the check
trustworthy; ``tests/test_gradcheck.py`` plants such bugs and shows the checker catches each.

The checker also verifies that neither pass wrote into its inputs or upstream gradients.
See walkthrough.md, chapter 1, for a guided tour.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np


_STREAM = 0x67726164  # "grad": keeps gradcheck's random numbers apart from the caller's


class TensorCheck(NamedTuple):
    """The verdict on one input's gradient."""

    name: str
    shape: tuple
    checked: int  # how many entries were compared (all, or a random sample)
    max_abs_err: float  # max |analytic - numeric| over the checked entries
    rel_err: float  # max_abs_err / max(|analytic|, |numeric|) over the checked entries
    ok: bool
    note: str = ""  # why a check could not run (e.g. the gradient has the wrong shape)


class GradcheckReport(NamedTuple):
    """Per-tensor verdicts; ``str(report)`` prints them as a table."""

    tensors: list
    atol: float  # the noise floor used: errors below it pass whatever their relative size
    rtol: float

    @property
    def ok(self):
        return all(t.ok for t in self.tensors)

    def failures(self):
        return [t for t in self.tensors if not t.ok]

    def __str__(self):
        lines = [f"{'tensor':<16} {'shape':<18} {'checked':>7} {'max abs err':>12} "
                 f"{'rel err':>10}  ok"]
        for t in self.tensors:
            lines.append(f"{t.name:<16} {str(t.shape):<18} {t.checked:>7} "
                         f"{t.max_abs_err:>12.3e} {t.rel_err:>10.3e}  {'yes' if t.ok else 'NO'}"
                         + (f"  ({t.note})" if t.note else ""))
        return "\n".join(lines)


class GradcheckError(AssertionError):
    """Raised when at least one gradient disagrees with its finite-difference estimate."""


def gradcheck(forward, backward, inputs, *, douts=None, sample=None, eps=1e-6, rtol=1e-7,
              atol=None, seed=0, raise_error=True):
    """Compare ``backward`` with centred finite differences of ``forward``.

    forward:  called as ``forward(**inputs)``; returns ``(y_1, ..., y_n, cache)`` as every
              forward in gla_np does (the cache comes last).
    backward: called as ``backward(dy_1, ..., dy_n, cache)``; returns the gradients of the
              inputs, in the order of ``inputs`` (a tuple), as a dict keyed like ``inputs``,
              or as a lone array when there is one input. ``None`` stands for zero.
    inputs:   dict name -> float64 array (a list of numbers is taken as one), each with at
              least one entry; the names are forward's keyword arguments. Wrap
              non-differentiable arguments (token ids, options) in a lambda.
    douts:    optional, one entry per output: an array to use as that output's upstream
              gradient, or None for "no gradient on this output" (passed to backward as None).
              By default every output gets a standard normal upstream gradient.
    sample:   check at most this many randomly chosen entries of each input (all if None).
    seed:     an integer >= 0; seeds the upstream gradients and the sample, from a stream
              distinct from ``np.random.default_rng(seed)`` (so they never repeat a test's own
              draws).
    eps:      the finite-difference step, a finite number > 0.
    rtol, atol: finite numbers >= 0 (an infinite tolerance would pass any backward).
              An input passes when max_abs_err <= max(atol, rtol * scale), where scale is the
              largest magnitude of the analytic or numeric gradient. atol defaults to the
              rounding noise of the difference quotient, eps_machine / eps * (1 + sum|y * dy|).

    Returns a GradcheckReport; raises GradcheckError naming every failing input unless
    ``raise_error=False``. Bad arguments of the checker itself (a step that is not a positive
    finite number, a negative or infinite tolerance, a NaN input) raise ValueError naming them.
    """
    for name, fn in (("forward", forward), ("backward", backward)):
        if not callable(fn):
            raise ValueError(f"{name}: expected a function, got {type(fn).__name__}")
    inputs = _check_inputs(inputs)
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, numbers.Integral)
                               or sample < 1):
        raise ValueError(f"sample: expected None or a positive integer, got {sample!r}")
    if not _is_real(eps) or not 0 < eps < math.inf:
        raise ValueError(f"eps: expected a finite number > 0 (the finite-difference step), "
                         f"got {eps!r}")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not (tol is None and name == "atol") and not (_is_real(tol) and 0 <= tol < math.inf):
            # an infinite tolerance passes every backward; a negative one fails every backward
            raise ValueError(f"{name}: expected a finite number >= 0, got {tol!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    if not isinstance(raise_error, bool):
        raise ValueError(f"raise_error: expected True or False, got {raise_error!r}")
    # A stream of its own: plain default_rng(seed) would hand out the very numbers a test drew
    # for its inputs with the same seed, so dy could equal x, and x.T @ dy = x.T @ x is
    # symmetric, which hides a transposed weight gradient.
    rng = np.random.default_rng([int(seed), _STREAM])
    originals = {name: x.copy() for name, x in inputs.items()}

    outputs, cache = _split(forward(**inputs))
    douts = _make_douts(outputs, douts, rng)
    douts_before = [None if d is None else d.copy() for d in douts]
    grads = _as_dict(backward(*douts, cache), inputs)

    for name, x in inputs.items():
        if not np.array_equal(x, originals[name]):
            raise GradcheckError(f"forward or backward wrote into its input {name!r}")
    for i, (d, d0) in enumerate(zip(douts, douts_before)):
        if d is not None and not np.array_equal(d, d0):
            raise GradcheckError(f"backward wrote into the upstream gradient of output {i}")

    def loss(args):
        ys, _ = _split(forward(**args))
        return sum(float(np.sum(y * d)) for y, d in zip(ys, douts) if d is not None)

    if atol is None:
        size = sum(float(np.sum(np.abs(y * d))) for y, d in zip(outputs, douts) if d is not None)
        atol = np.finfo(np.float64).eps / eps * (1.0 + size)

    checks = []
    for name, x in inputs.items():
        checks.append(_check_one(name, x, grads[name], inputs, loss, sample, eps, rtol, atol, rng))
    report = GradcheckReport(checks, atol, rtol)
    if raise_error and not report.ok:
        names = ", ".join(repr(t.name) for t in report.failures())
        raise GradcheckError(f"gradient check failed for {names}\n{report}")
    return report


def _check_one(name, x, analytic, inputs, loss, sample, eps, rtol, atol, rng):
    """Finite-difference one input (all entries or a sample) and compare with ``analytic``."""
    if analytic is None:
        analytic = np.zeros_like(x)
    analytic = np.asarray(analytic, dtype=np.float64)
    if analytic.shape != x.shape:
        note = f"backward returned shape {analytic.shape}, expected {x.shape}"
        return TensorCheck(name, x.shape, 0, np.inf, np.inf, False, note)
    flat = np.arange(x.size)
    if sample is not None and x.size > sample:
        flat = rng.choice(x.size, size=sample, replace=False)
    numeric = np.empty(len(flat))
    probe = dict(inputs)
    for j, e in enumerate(flat):
        idx = np.unravel_index(e, x.shape)
        shifted = x.copy()
        shifted[idx] = x[idx] + eps
        probe[name] = shifted
        up = loss(probe)
        shifted[idx] = x[idx] - eps
        down = loss(probe)
        numeric[j] = (up - down) / (2 * eps)
    picked = analytic.reshape(-1)[flat]
    err = np.abs(picked - numeric)
    max_abs = float(err.max()) if err.size else 0.0
    scale = float(max(np.abs(picked).max(initial=0.0), np.abs(numeric).max(initial=0.0)))
    rel = max_abs / scale if scale > 0 else 0.0
    ok = bool(np.isfinite(max_abs) and max_abs <= max(atol, rtol * scale))
    return TensorCheck(name, x.shape, len(flat), max_abs, rel, ok)


def _check_inputs(inputs):
    if not isinstance(inputs, dict) or not inputs:
        raise ValueError("inputs: expected a non-empty dict of name -> float64 array")
    out = {}
    for name, x in inputs.items():
        if not isinstance(name, str):  # forward(**inputs) takes keyword arguments
            raise ValueError(f"inputs: expected argument names (strings) as keys, got "
                             f"{name!r}")
        if isinstance(x, np.float64):
            x = np.asarray(x)  # a NumPy float64 scalar becomes a 0-d array
        if isinstance(x, (list, tuple)):
            try:  # a list of numbers is an array (of float64: gradcheck's dtype)
                x = np.asarray(x, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"inputs[{name!r}]: expected a float64 array or a list of "
                                 f"numbers, got a list that is not one") from None
        if not isinstance(x, np.ndarray):
            raise ValueError(f"inputs[{name!r}]: expected a float64 NumPy array, "
                             f"got {type(x).__name__}")
        if x.dtype != np.float64:
            raise ValueError(f"inputs[{name!r}]: gradcheck runs in float64, got {x.dtype}")
        if x.size == 0:  # its check would compare nothing and pass
            raise ValueError(f"inputs[{name!r}]: is empty (shape {x.shape}); there would be "
                             f"no entry to check")
        if not np.isfinite(x).all():  # else, NaN != NaN, it would look written into later
            raise ValueError(f"inputs[{name!r}]: contains nan or inf; expected finite values")
        out[name] = x
    return out


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _split(result):
    """Split a forward's ``(y_1, ..., y_n, cache)`` into outputs and cache."""
    if not isinstance(result, tuple) or len(result) < 2:
        raise ValueError("forward: expected it to return (output, ..., cache)")
    return [np.asarray(y, dtype=np.float64) for y in result[:-1]], result[-1]


def _make_douts(outputs, douts, rng):
    if douts is None:
        return [rng.standard_normal(y.shape) for y in outputs]
    if len(douts) != len(outputs):
        raise ValueError(f"douts: expected {len(outputs)} entries (one per output), "
                         f"got {len(douts)}")
    made = []
    for i, (y, d) in enumerate(zip(outputs, douts)):
        if d is not None:
            d = np.asarray(d, dtype=np.float64)
            if d.shape != y.shape:
                raise ValueError(f"douts[{i}]: expected shape {y.shape}, got {d.shape}")
            if not np.isfinite(d).all():
                raise ValueError(f"douts[{i}]: contains nan or inf; expected finite values")
        made.append(d)
    return made


def _as_dict(grads, inputs):
    names = list(inputs)
    if isinstance(grads, dict):
        missing = set(names) - set(grads)
        if missing:
            raise GradcheckError(f"backward returned no gradient for {sorted(missing)}")
        return grads
    if grads is None or isinstance(grads, (np.ndarray, numbers.Number)):
        grads = (grads,)  # a lone gradient (None: zero) for a one-input function
    grads = list(grads)
    while len(grads) > len(names) and grads[-1] is None:
        grads.pop()  # e.g. d_initial_state = None when no initial state was given
    if len(grads) != len(names):
        raise GradcheckError(f"backward returned {len(grads)} gradients for {len(names)} "
                             f"inputs {names}")
    return dict(zip(names, grads))
