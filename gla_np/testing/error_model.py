"""The error model: how far a correct kernel may land from the float64 reference, per entry.

A correct kernel's entry satisfies ``|got - ref| <= bound``, where :func:`bound` is
``(η n_round + η_acc n_span span) M + η_acc n_pass M_pass + η_acc span (M_window - M_pass) +
η_64 n_ref M_window + atol`` with the constants of :class:`ErrorModel` per precision
(derived in docs/testing-your-kernel.md, symbols named in docs/notation.md): an in-chunk part,
:func:`tolerance`, that grows with the entry's magnitude and the log-gate span of a chunk, and
step terms, :func:`per_step_tolerance`, that grow with the sequential steps each term went
through. :func:`dg_identity_loss` says how much looser dg's bound is for a kernel that uses the
plain gate identity.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from gla_np._checks import check_choice
from gla_np.testing.float64_reference import NAMES
from gla_np.testing.magnitudes import Magnitudes

# Unit roundoff η (half an ulp at 1) of the precision a kernel's products are formed in, and the
# dtype it accumulates and takes cumulative sums in. bf16 and fp16 kernels accumulate in
# float32; "tf32" is float32 storage whose matmul inputs are rounded to 10 explicit mantissa
# bits (so η = 2^-11, as float16's), accumulated in float32.
UNIT_ROUNDOFF = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "tf32": 2.0 ** -11,
                 "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
ACCUMULATES_IN = {"float64": "float64", "float32": "float32", "tf32": "float32",
                  "float16": "float32", "bfloat16": "float32"}
# The reference runs the recurrence in float64: this many float64 roundings per step it takes
# (exp of the gate, the product, the sum into the state: at most about 2, doubled).
REFERENCE_PER_STEP = 4.0


class ErrorModel(NamedTuple):
    """The constants of the bound (derived in docs/testing-your-kernel.md), with η the unit
    roundoff of the kernel's products, η_acc of its accumulation dtype, η_64 of float64:

        bound = (η n_round + η_acc n_span span) M  +  η_acc n_pass M_pass
                +  η_acc span (M_window - M_pass)  +  η_64 n_ref M_window  +  atol

    roundings (n_round): the roundings of size η one term may collect inside a chunk (inputs to
    matmuls, the matmul sums, the output store); per_log_gate (n_span): the relative error of a
    decay factor per unit of log-gate span, in units of η_acc (the cumulative sums of the log
    gates are rounded in the accumulation dtype); per_pass (n_pass): the roundings of η_acc a
    term collects at each chunk-to-chunk state pass it goes through (a recurrent kernel: at
    every step). M_pass weights each term of the magnitude M by its number of passes, M_window
    by its decay window's length (:class:`Reference`: ``passes``, ``window``): each step of the
    window that is no pass adds one rounding of a partial sum of log gates, at most η_acc span;
    the float64 reference takes n_ref = REFERENCE_PER_STEP roundings of η_64 at every step.
    """

    roundings: float
    per_log_gate: float
    per_pass: float
    atol: float


ERROR_MODELS = {
    "float64": ErrorModel(roundings=128.0, per_log_gate=16.0, per_pass=4.0, atol=1e-300),
    "float32": ErrorModel(roundings=128.0, per_log_gate=16.0, per_pass=4.0, atol=1e-37),
    "tf32": ErrorModel(roundings=8.0, per_log_gate=16.0, per_pass=4.0, atol=1e-37),
    "float16": ErrorModel(roundings=8.0, per_log_gate=16.0, per_pass=4.0, atol=1e-7),
    "bfloat16": ErrorModel(roundings=8.0, per_log_gate=16.0, per_pass=4.0, atol=1e-37),
}


def _dtype_name(dtype):
    name = dtype if isinstance(dtype, str) else getattr(np.dtype(dtype), "name", str(dtype))
    if name not in ERROR_MODELS:
        raise ValueError(f"dtype: expected one of {sorted(ERROR_MODELS)} (the precision the "
                         f"kernel computes in), got {dtype!r}")
    return name


def tolerance(dtype, log_gate_span=0.0):
    """The in-chunk part of the bound, ``(rtol, atol)``, for a kernel of ``dtype`` at this
    log-gate span: ``rtol = η n_round + η_acc n_span span``. The full bound adds the step
    terms (:func:`bound`)."""
    name = _dtype_name(dtype)
    model = ERROR_MODELS[name]
    if isinstance(log_gate_span, bool) or not isinstance(log_gate_span, numbers.Real) or \
            not log_gate_span >= 0:
        raise ValueError(f"log_gate_span: expected a number >= 0, got {log_gate_span!r}")
    eta, eta_acc = UNIT_ROUNDOFF[name], UNIT_ROUNDOFF[ACCUMULATES_IN[name]]
    return eta * model.roundings + eta_acc * model.per_log_gate * log_gate_span, model.atol


def per_step_tolerance(dtype, log_gate_span=0.0):
    """The step terms' coefficients ``(per pass, per window step, per reference step)``: the
    relative error a term collects at each chunk-to-chunk state pass of the kernel,
    ``η_acc n_pass``; at each other step of its decay window, from the cumulative sum of the
    log gates, ``η_acc span``; and at each step of the float64 reference, ``η_64 n_ref``."""
    name = _dtype_name(dtype)
    eta_acc = UNIT_ROUNDOFF[ACCUMULATES_IN[name]]
    return (eta_acc * ERROR_MODELS[name].per_pass, eta_acc * log_gate_span,
            UNIT_ROUNDOFF["float64"] * REFERENCE_PER_STEP)


def _step_terms(dtype, span, mags):
    """The length-dependent part of the bound, per entry."""
    per_pass, per_window_step, per_ref_step = per_step_tolerance(dtype, span)
    inside = np.maximum(mags.window - mags.passes, 0.0)  # window steps that are no pass
    return per_pass * mags.passes + per_window_step * inside + per_ref_step * mags.window


def _magnitudes_of(ref, name, dg_identity):
    if name == "dg" and dg_identity:
        return ref.dg_identity
    return Magnitudes(getattr(ref.magnitude, name), getattr(ref.passes, name),
                      getattr(ref.window, name))


def _span_for(ref, dtype):
    """The log-gate span for a kernel of this dtype: resets count as its floor."""
    return ref.log_gate_span_float64 if _dtype_name(dtype) == "float64" else ref.log_gate_span


def bound(name, ref, *, dtype, dg_identity=False):
    """The per-entry bound on |got - ref| for tensor ``name`` of a kernel computing in ``dtype``:

        (η n_round + η_acc n_span span) M  +  η_acc n_pass M_pass
        +  η_acc span (M_window - M_pass)  +  η_64 n_ref M_window  +  atol     (see ErrorModel)

    ``dg_identity=True`` judges dg by the terms of the plain gate identity (a kernel that
    computes dg as fla does: one reverse cumulative sum of q dq - k dk, self pairs included)."""
    check_choice("name", name, NAMES)
    if getattr(ref, name) is None:
        raise ValueError(f"ref: has no {name} (no upstream gradient, or no initial state)")
    mags = _magnitudes_of(ref, name, dg_identity)
    span = _span_for(ref, dtype)
    rtol, atol = tolerance(dtype, span)
    return rtol * mags.magnitude + _step_terms(dtype, span, mags) + atol


def dg_identity_loss(ref):
    """How much a plain-identity kernel can lose on dg at these inputs: the largest ratio of the
    identity's magnitude to dg's own (B5) magnitude over the entries. The identity's bound lets
    dg be off by up to ``rtol * dg_identity_loss(ref)`` relative to the size of dg's own terms."""
    if ref.dg is None:
        raise ValueError("ref: has no dg (no upstream gradient)")
    own, ident = ref.magnitude.dg, ref.dg_identity.magnitude
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(own > 0, ident / own, np.where(ident > 0, np.inf, 1.0))
    return float(ratio.max()) if ratio.size else 1.0
