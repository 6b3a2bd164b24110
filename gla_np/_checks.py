"""Input checks shared by every public function.

Bad input must fail early with a ValueError that names the argument and says what was expected,
never with a NumPy traceback from deep inside a computation or, worse, a silent wrong answer.
These helpers keep those messages uniform. They are deliberately small: reading a forward pass,
you can skip every line that starts with ``check_``.
"""

from __future__ import annotations

import contextlib
import contextvars
import numbers

import numpy as np

FLOAT_DTYPES = (np.float32, np.float64)

# The nan/inf scan is the one check that reads a whole array; the rest look at its shape and
# dtype. Inside ``values_scanned()`` it is skipped: the arrays handed from one gla_np function to
# the next were computed by gla_np from inputs that were scanned once on the way in.
_VALUES_SCANNED = contextvars.ContextVar("gla_np_values_scanned", default=False)


@contextlib.contextmanager
def values_scanned():
    """A block whose inputs have been scanned for nan and inf already: ``check_array`` skips the
    scan inside it (in this thread only; rank, dtype and shape checks stay).

    ``lm.loss_and_grads`` runs its step inside one after scanning every parameter once: the
    layers' own scans of their activations and gradients cost about 4 % of a step of the large
    benchmark config (docs/performance.md). A nan made inside (an overflow) still reaches the loss,
    where the training command stops on it.
    """
    token = _VALUES_SCANNED.set(True)
    try:
        yield
    finally:
        _VALUES_SCANNED.reset(token)


def scanning_values():
    """False inside ``values_scanned()``: for a check that scans values in its own way."""
    return not _VALUES_SCANNED.get()


def check_array(name, x, *, ndim=None, min_ndim=None, dtype_float=True, finite=True):
    """Return ``x`` as an ndarray after checking its rank, dtype and values.

    ``ndim`` asks for an exact rank, ``min_ndim`` for a lower bound. Float arrays must be float32
    or float64 (the two precisions gla_np supports) and, unless ``finite=False``, contain no
    nan or inf.
    """
    if not isinstance(x, np.ndarray):
        if x is None or isinstance(x, (str, bytes, dict)):
            raise ValueError(f"{name}: expected a NumPy array, got {type(x).__name__}")
        x = np.asarray(x)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {x.shape}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(f"{name}: expected at least {min_ndim} dimensions, got shape {x.shape}")
    if dtype_float:
        if x.dtype.type not in FLOAT_DTYPES:
            raise ValueError(f"{name}: expected a float32 or float64 array, got dtype {x.dtype}")
        # (the context variable read here, not through scanning_values: one call fewer on a
        # path every public function takes several times)
        if finite and not _VALUES_SCANNED.get() and not np.isfinite(x).all():
            raise ValueError(f"{name}: contains nan or inf; expected finite values")
    return x


def check_shape(name, x, expected):
    """Check ``x.shape == expected``; ``None`` in ``expected`` matches any size."""
    shape = x.shape
    if shape == expected:  # the common case, one comparison (a tuple with None never equals)
        return x
    if len(shape) == len(expected):
        for s, e in zip(shape, expected):  # a plain loop: cheaper than all() over a generator
            if e is not None and e != s:
                break
        else:
            return x
    want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
    raise ValueError(f"{name}: expected shape {want}, got {x.shape}")


def check_same_dtype(**arrays):
    """Check that all non-None arrays share one float dtype; return it."""
    dtype = None
    for a in arrays.values():  # the common case: one loop, no lists
        if a is not None:
            if dtype is None:
                dtype = a.dtype
            elif a.dtype != dtype:
                break
    else:
        if dtype is not None:
            return dtype
    named = [(n, a) for n, a in arrays.items() if a is not None]
    dtypes = {a.dtype for _, a in named}
    if len(dtypes) > 1:
        listing = ", ".join(f"{n}: {a.dtype}" for n, a in named)
        raise ValueError(f"expected one dtype for all inputs, got {listing}")
    return named[0][1].dtype


def check_like(name, value, /, **like):
    """Check ``value``, named ``name``, against the one array in ``like`` (``x=x_hat``, say):
    the same shape and dtype, as an upstream gradient must match its forward's array. Returns
    ``value`` as an ndarray."""
    (like_name, ref), = like.items()
    value = check_array(name, value)
    if value.shape == ref.shape and value.dtype == ref.dtype:  # the common case
        return value
    check_shape(name, value, ref.shape)
    check_same_dtype(**{name: value, like_name: ref})
    return value


def check_positive_int(name, value):
    """Check that ``value`` is an int >= 1 (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def check_nonnegative_int(name, value):
    """Check that ``value`` is an int >= 0 (bools are refused), such as a seed."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
    return int(value)


def check_positive_real(name, value):
    """Check that ``value`` is a finite real number > 0 (bools are refused); return a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            np.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


def check_rate(name, value):
    """Check that ``value`` is a probability in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{name}: expected a number in [0, 1), got {value!r}")
    return float(value)


def check_choice(name, value, choices):
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {sorted(choices)}, got {value!r}")
    return value


def check_bool(name, value):
    """Check that ``value`` is True or False (not a string such as "no", which is truthy)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def check_cache(cache, kind, forward):
    """Check that ``cache`` is a ``kind`` (the cache type ``forward`` returns), so that a
    backward given something else (None, another part's cache) says so by name."""
    if not isinstance(cache, kind):
        raise ValueError(f"cache: expected the {kind.__name__} that {forward} returned, got "
                         f"{type(cache).__name__}")
    return cache
