"""Comparing a kernel's tensors with the reference: assert_close, assert_all_close, BoundExceeded.

:func:`assert_close` checks one tensor entry by entry against :func:`~gla_np.testing.bound` and
returns the worst |error| / bound; on failure it raises :class:`BoundExceeded` naming the worst
entry. :func:`assert_all_close` checks every tensor a kernel gives before failing.
"""

from __future__ import annotations

import numpy as np

from gla_np._checks import check_choice
from gla_np.testing.error_model import _magnitudes_of, _span_for, _step_terms, tolerance
from gla_np.testing.float64_reference import NAMES, Reference


class BoundExceeded(AssertionError):
    """:func:`assert_close`'s failure, with what it found: ``name``, ``ratio`` (the worst
    |error| / bound), ``index`` of that entry, ``got``, ``want``, ``error``, ``bound``,
    ``magnitude`` there, and ``failed`` of ``size`` entries over their bound."""

    __module__ = "gla_np.testing"  # a traceback names it by the path users import it from

    def __init__(self, message, **found):
        super().__init__(message)
        self.__dict__.update(found)


def _worst(name, got, want, bound_, mag):
    """The comparison of one tensor: a dict of what the worst entry is, or raise on nan/shape."""
    got64 = np.asarray(got, dtype=np.float64)
    if got64.shape != want.shape:
        raise AssertionError(f"{name}: shape {got64.shape}, expected {want.shape}")
    err = np.abs(got64 - want)
    err = np.where(np.isfinite(got64), err, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = err / bound_
    if not ratio.size:
        return dict(name=name, ratio=0.0, failed=0, size=0, index=(), got=0.0, want=0.0,
                    error=0.0, bound=0.0, magnitude=0.0)
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(ratio)), ratio.shape))
    return dict(name=name, ratio=float(ratio[idx]), failed=int((ratio > 1).sum()),
                size=ratio.size, index=idx, got=float(got64[idx]), want=float(want[idx]),
                error=float(err[idx]), bound=float(bound_[idx]), magnitude=float(mag[idx]))


def _describe(w):
    """One line on a tensor's worst entry (a zero reference magnitude said as such)."""
    if not np.isfinite(w["got"]):
        size = f"got {w['got']!r} (nan or inf)"
    elif w["magnitude"] == 0:
        size = (f"got {w['got']!r}, reference {w['want']!r}: every term of this entry is 0 "
                f"(reference magnitude 0), so its bound is atol alone, {w['bound']:.1e}")
    else:
        size = (f"got {w['got']!r}, reference {w['want']!r}, |error| {w['error']:.3e} > bound "
                f"{w['bound']:.3e} (magnitude {w['magnitude']:.3e}; {w['ratio']:.3g} times "
                f"the bound)")
    return (f"{w['name']}: {w['failed']} of {w['size']} entries exceed the error bound; worst at "
            f"index {w['index']}: {size}")


def assert_close(name, got, ref, *, dtype, dg_identity=False, rtol=None, atol=None,
                 magnitude=None, log_gate_span=None):
    """Check one tensor of a kernel against the reference; return the worst |error| / bound.

    ``name`` is one of o, final_state, dq, dk, dv, dg, d_initial_state; ``ref`` a
    :class:`Reference` (or a plain float64 array, then ``magnitude`` and ``log_gate_span`` must
    be given, and the step terms are left out); ``dtype`` the precision the kernel computes in
    (float64, float32, "tf32", float16 or "bfloat16"). Passes when every entry has
    |got - ref| <= :func:`bound`; ``rtol`` and ``atol`` replace the in-chunk part
    ``rtol * M + atol``. ``dg_identity=True``: see :func:`bound`. Raises :class:`BoundExceeded`
    naming the worst entry (the largest |error| / bound), its index, both values, the bound and
    the ratio (also on the exception, ``.ratio``), and how many entries failed; a nan or inf
    in ``got`` fails there.
    """
    check_choice("name", name, NAMES)
    if isinstance(ref, Reference):
        want = getattr(ref, name)
        if want is None:
            raise ValueError(f"ref: has no {name} (no upstream gradient, or no initial state)")
        mags = _magnitudes_of(ref, name, dg_identity)
        span = _span_for(ref, dtype) if log_gate_span is None else log_gate_span
        mag = mags.magnitude
        model_rtol, model_atol = tolerance(dtype, span)
        extra = _step_terms(dtype, span, mags)
    else:
        if magnitude is None or log_gate_span is None:
            raise ValueError("magnitude: with a plain array as ref, give magnitude= and "
                             "log_gate_span= (or pass the Reference from reference())")
        want, mag = np.asarray(ref, dtype=np.float64), np.asarray(magnitude, dtype=np.float64)
        model_rtol, model_atol = tolerance(dtype, log_gate_span)
        extra = 0.0
    rtol = model_rtol if rtol is None else rtol
    atol = model_atol if atol is None else atol
    w = _worst(name, got, want, rtol * mag + extra + atol, mag)
    if w["ratio"] > 1.0:
        raise BoundExceeded(_describe(w), **w)
    return w["ratio"]


def assert_all_close(got, ref, *, dtype, **options):
    """:func:`assert_close` on every tensor the reference has and ``got`` gives (a dict, or a
    Tensors/tuple in NAMES order; None entries are skipped), all of them before failing: the
    AssertionError lists every failing tensor. Return the worst ratio seen."""
    items = got.items() if isinstance(got, dict) else zip(NAMES, got)
    worst, failures = 0.0, []
    for name, x in items:
        if x is not None and getattr(ref, name) is not None:
            try:
                worst = max(worst, assert_close(name, x, ref, dtype=dtype, **options))
            except AssertionError as err:
                failures.append(str(err))
    if failures:
        raise AssertionError("\n".join(failures))
    return worst
