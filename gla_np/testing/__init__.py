"""gla_np as the oracle for another GLA implementation: reference values, an error model, inputs.

For a kernel author (a Triton/CUDA/JAX GLA kernel, a port to a new backend), the whole test:

    from gla_np.testing import judge
    judge(my_forward, my_backward, dtype="float32", layout="BTHK", chunk_size=64)

or, tensor by tensor:

    ref = reference(q, k, v, g, initial_state=S0, do=do, d_final_state=dS_T, layout="BTHK")
    assert_close("dg", dg_mine, ref, dtype="float32")

Every name below is imported from here, ``from gla_np.testing import ...``; the submodules, in
reading order, are where each is written:

1. ``magnitudes``: the sums of |terms| behind the bound (M, and M_pass, M_window: each term
   weighted by the chunk passes and the steps of its decay window), dg's terms.
2. ``float64_reference``: :func:`reference` runs gla_np in float64 whatever the caller's dtype
   and returns a :class:`Reference`: the output, the final state and all five gradients in the
   caller's layout, plus what the error model needs (the magnitudes, the log-gate span of
   :func:`log_gate_span`).
3. ``error_model``: :func:`bound`, the per-entry bound of docs/testing-your-kernel.md. It grows
   with the entry's magnitude, with the log-gate span of a chunk, and with the sequential steps
   each term went through (the kernel's chunk-to-chunk state passes, its decay window, the
   reference's own steps); :func:`tolerance`, :func:`per_step_tolerance`, :class:`ErrorModel`.
4. ``comparison``: :func:`assert_close` compares one tensor with the reference, ``|got - ref|
   <= bound`` entry by entry; on failure it raises :class:`BoundExceeded` (an AssertionError)
   naming the worst entry, with the ratio on it. :func:`assert_all_close` checks every tensor.
5. ``strategies``: :func:`gla_examples`, a hypothesis strategy for GLA inputs (hypothesis is a
   test-only dependency, imported when the function is called).
6. ``judging``: :func:`judge` runs a kernel's forward and backward on the golden cases and on
   drawn inputs and reports every failing tensor of every case in one table.

``python -m gla_np.golden`` writes a file of fixed cases for tests outside Python.
"""

from gla_np.testing.magnitudes import Magnitudes
from gla_np.testing.float64_reference import (FORMS, LAYOUTS, NAMES, Reference, Tensors,
                                              log_gate_span, reference)
from gla_np.testing.error_model import (ACCUMULATES_IN, ERROR_MODELS, REFERENCE_PER_STEP,
                                        UNIT_ROUNDOFF, ErrorModel, bound, dg_identity_loss,
                                        per_step_tolerance, tolerance)
from gla_np.testing.comparison import BoundExceeded, assert_all_close, assert_close
from gla_np.testing.strategies import GLAExample, gla_examples
from gla_np.testing.judging import INPUT_DTYPES, Verdict, judge

__all__ = [
    "FORMS", "LAYOUTS", "NAMES", "Magnitudes", "Reference", "Tensors", "log_gate_span",
    "reference",
    "ACCUMULATES_IN", "ERROR_MODELS", "REFERENCE_PER_STEP", "UNIT_ROUNDOFF", "ErrorModel",
    "bound", "dg_identity_loss", "per_step_tolerance", "tolerance",
    "BoundExceeded", "assert_all_close", "assert_close",
    "GLAExample", "gla_examples",
    "INPUT_DTYPES", "Verdict", "judge",
]
