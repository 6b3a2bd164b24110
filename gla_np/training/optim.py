"""Optimizers, gradient clipping and a learning-rate schedule, written out by hand.

Every optimizer here is pure. It holds only its hyperparameters (a frozen dataclass); the
moving averages live in a *state* that the caller passes in and gets back:

    opt = AdamW(weight_decay=0.1)
    state = opt.init(params)                                   # zeros and step = 0
    params, state = opt.step(params, grads, state, lr=1e-3)    # new dicts, inputs untouched

The learning rate is an argument of ``step`` rather than a hyperparameter, so a schedule is just
a function of the step number (``warmup_cosine``). The state is a flat dict of arrays, keyed
``"step"`` (a 0-d int64 array, the number of updates taken so far) and ``"<slot>/<param name>"``
(for example ``"m/layers.0.attn.q_proj.weight"``). A checkpoint stores it as it is and a
restored state continues bit for bit.

Update rules (g the gradient, t the step number counted from 1, lr the learning rate):

    SGD with momentum:  b_t = mu * b_{t-1} + g_t;  p_t = p_{t-1} - lr * b_t        (b_0 = 0)
    Adam:               m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
                        v_t = beta2 * v_{t-1} + (1 - beta2) * g_t^2
                        m^_t = m_t / (1 - beta1^t),  v^_t = v_t / (1 - beta2^t)  (bias corrections)
                        p_t = p_{t-1} - lr * m^_t / (sqrt(v^_t) + eps)
    AdamW:              p' = p_{t-1} * (1 - lr * wd)   for the decayed parameters only,
                        then the Adam update applied to p' (the decay never enters m or v).

Which parameters AdamW decays: the matrices (arrays with two or more dimensions: the linear
weights, the embedding table, the output head, the gate's low-rank factors, the short
convolution's kernels), and no vector (biases, norm weights, the gate bias). Decaying a norm
weight pulls it towards 0 and so shrinks the whole activation; decaying the gate bias pulls the
gate towards "half open" with no benefit to generalisation. The rule is
``decay_matrices(name, value)``; pass your own predicate as ``AdamW(decay=...)`` to change it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable

import numpy as np

from gla_np._checks import check_array


def decay_matrices(name, value):
    """The default AdamW decay rule: decay arrays with >= 2 dimensions, never vectors."""
    return value.ndim >= 2


def _check_params(name, params):
    """Return ``params`` checked as a non-empty dict of finite float arrays."""
    if not isinstance(params, dict) or not params:
        raise ValueError(f"{name}: expected a non-empty dict of name -> float array")
    for key, value in params.items():
        check_array(f"{name}[{key!r}]", value)
    return params


def _check_grads(params, grads):
    """Check that ``grads`` mirrors ``params``: same keys, shapes and dtypes."""
    _check_params("grads", grads)
    if set(grads) != set(params):
        missing, extra = sorted(set(params) - set(grads)), sorted(set(grads) - set(params))
        raise ValueError(f"grads: expected the keys of params; missing {missing}, extra {extra}")
    for key, p in params.items():
        if grads[key].shape != p.shape or grads[key].dtype != p.dtype:
            raise ValueError(f"grads[{key!r}]: expected shape {p.shape} and dtype {p.dtype}, "
                             f"got {grads[key].shape} {grads[key].dtype}")


def _check_state(state, params, slots):
    """Check that ``state`` has the step counter and one array per slot and parameter."""
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError("state: expected the dict made by init(params), with a 'step' entry")
    for slot in slots:
        for key, p in params.items():
            entry = state.get(f"{slot}/{key}")
            if entry is None or entry.shape != p.shape:
                raise ValueError(f"state[{slot + '/' + key!r}]: expected an array of shape "
                                 f"{p.shape}, got {None if entry is None else entry.shape}")


def _check_lr(lr):
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr: expected a finite number >= 0, got {lr!r}")
    return float(lr)


def _zeros_state(params, slots):
    state = {"step": np.array(0, dtype=np.int64)}
    for slot in slots:
        for key, p in params.items():
            state[f"{slot}/{key}"] = np.zeros_like(p)
    return state


@dataclass(frozen=True)
class SGD:
    """Stochastic gradient descent with (heavy-ball) momentum ``momentum`` (0 turns it off)."""

    momentum: float = 0.9

    def __post_init__(self):
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum: expected a number in [0, 1), got {self.momentum!r}")

    def init(self, params):
        """A fresh state: a zero velocity ``"b/<name>"`` per parameter and step 0."""
        return _zeros_state(_check_params("params", params), ("b",))

    def step(self, params, grads, state, lr):
        """One update; returns ``(new_params, new_state)``, leaving the inputs untouched."""
        _check_params("params", params)
        _check_grads(params, grads)
        _check_state(state, params, ("b",))
        lr = _check_lr(lr)
        new_params, new_state = {}, {"step": np.array(int(state["step"]) + 1, dtype=np.int64)}
        for key, p in params.items():
            b = self.momentum * state["b/" + key] + grads[key]  # b_t = mu b_{t-1} + g_t
            new_state["b/" + key] = b = b.astype(p.dtype, copy=False)  # (see _update on dtype)
            new_params[key] = (p - lr * b).astype(p.dtype, copy=False)
        return new_params, new_state


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma and Ba, 2015) with bias-corrected moment estimates and no weight decay."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self):
        for name, beta in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not 0 <= beta < 1:
                raise ValueError(f"{name}: expected a number in [0, 1), got {beta!r}")
        if not self.eps > 0:
            raise ValueError(f"eps: expected a number > 0, got {self.eps!r}")

    def init(self, params):
        """A fresh state: zero first and second moments ``"m/<name>"``, ``"v/<name>"``, step 0."""
        return _zeros_state(_check_params("params", params), ("m", "v"))

    def step(self, params, grads, state, lr):
        """One update; returns ``(new_params, new_state)``, leaving the inputs untouched."""
        _check_params("params", params)
        _check_grads(params, grads)
        _check_state(state, params, ("m", "v"))
        return self._update(params, grads, state, _check_lr(lr), decayed=(), weight_decay=0.0)

    def _update(self, params, grads, state, lr, decayed, weight_decay):
        """Adam on every parameter, after multiplying those in ``decayed`` by (1 - lr * wd)."""
        t = int(state["step"]) + 1
        # Bias corrections in float64 Python scalars. Every scalar enters an operation in the
        # parameter's dtype (``cast``), as NumPy 2 casts a Python float next to an array, so
        # float32 parameters stay float32 (also a 0-d one under NumPy 1.x).
        correction1 = 1.0 - self.beta1 ** t
        correction2 = 1.0 - self.beta2 ** t
        new_params, new_state = {}, {"step": np.array(t, dtype=np.int64)}
        for key, p in params.items():
            g, cast = grads[key], p.dtype.type
            # The rules of the module docstring, one operation at a time into arrays made here
            # (buffer reuse: ``tmp`` holds (1 - beta1) g, then (1 - beta2) g^2, then the step).
            tmp, m, v, denominator = (np.empty_like(p) for _ in range(4))  # (out=: also 0-d)
            np.multiply(g, cast(1.0 - self.beta1), out=tmp)
            np.multiply(state["m/" + key], cast(self.beta1), out=m)
            m += tmp  # m_t = beta1 m_{t-1} + (1 - beta1) g_t
            np.multiply(g, g, out=tmp)
            tmp *= cast(1.0 - self.beta2)
            np.multiply(state["v/" + key], cast(self.beta2), out=v)
            v += tmp  # v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
            new_state["m/" + key], new_state["v/" + key] = m, v
            if key in decayed:
                p = p * cast(1.0 - lr * weight_decay)  # decoupled: before, and outside, m and v
            np.divide(m, cast(correction1), out=tmp)  # m^
            tmp *= cast(lr)
            np.divide(v, cast(correction2), out=denominator)  # v^
            np.sqrt(denominator, out=denominator)
            denominator += cast(self.eps)
            tmp /= denominator  # lr m^ / (sqrt(v^) + eps)
            new_params[key] = np.subtract(p, tmp, out=tmp)
        return new_params, new_state


@dataclass(frozen=True)
class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter, 2019).

    ``weight_decay`` multiplies the decayed parameters by ``1 - lr * weight_decay`` before the
    Adam step; ``decay(name, value) -> bool`` picks them (default: matrices, not vectors).
    """

    weight_decay: float = 0.01
    decay: Callable = decay_matrices

    def __post_init__(self):
        super().__post_init__()
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay: expected a number >= 0, got {self.weight_decay!r}")

    def decayed(self, params):
        """The names of the parameters that weight decay applies to, in params order."""
        return [key for key, p in params.items() if self.decay(key, p)]

    def step(self, params, grads, state, lr):
        """One update; returns ``(new_params, new_state)``, leaving the inputs untouched."""
        _check_params("params", params)
        _check_grads(params, grads)
        _check_state(state, params, ("m", "v"))
        decayed = set(self.decayed(params))
        return self._update(params, grads, state, _check_lr(lr), decayed, self.weight_decay)


def global_norm(grads):
    """sqrt of the sum of squares of every entry of every array in ``grads`` (float64)."""
    return math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))


def clip_by_global_norm(grads, max_norm):
    """Scale all gradients together so their global norm is at most ``max_norm``.

    Returns ``(clipped, norm)``: a new dict (the input dict and arrays are untouched) and the
    global norm *before* clipping, which is worth logging. When ``norm <= max_norm`` the arrays
    are returned as they are; otherwise each is multiplied by ``max_norm / norm``, which keeps
    the direction of the full gradient. A nan or inf norm raises ValueError naming the first
    non-finite gradient, since no scale can repair it.
    """
    _check_params_finite_keys(grads)
    if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real) or not max_norm > 0:
        raise ValueError(f"max_norm: expected a number > 0, got {max_norm!r}")
    norm = global_norm(grads)
    if not math.isfinite(norm):
        bad = next(k for k, g in grads.items() if not np.isfinite(g).all())
        raise ValueError(f"grads[{bad!r}]: contains nan or inf; cannot clip")
    if norm <= max_norm:
        return dict(grads), norm
    scale = max_norm / norm
    # astype: a 0-d float32 gradient times a Python float is float64 under NumPy 1.x
    return {key: (g * scale).astype(g.dtype, copy=False) for key, g in grads.items()}, norm


def _check_params_finite_keys(grads):
    """Like _check_params but lets nan/inf through: clipping reports them itself."""
    if not isinstance(grads, dict) or not grads:
        raise ValueError("grads: expected a non-empty dict of name -> float array")
    for key, g in grads.items():
        check_array(f"grads[{key!r}]", g, finite=False)


def warmup_cosine(step, *, peak_lr, warmup_steps, total_steps, min_lr=0.0):
    """The learning rate for update number ``step`` (counted from 0).

        step < warmup:  lr = peak_lr * (step + 1) / warmup_steps       (linear, never 0)
        afterwards:     p = (step - warmup_steps) / (total_steps - warmup_steps), capped at 1
                        lr = min_lr + (peak_lr - min_lr) * (1 + cos(pi * p)) / 2

    So the last warmup step and the first decay step both use ``peak_lr``, and ``step >=
    total_steps`` gives ``min_lr`` (the floor).
    """
    for name, value in (("step", step), ("total_steps", total_steps)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, numbers.Integral) \
            or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps: expected an integer in [0, total_steps={total_steps}], "
                         f"got {warmup_steps!r}")
    if not 0 <= min_lr <= peak_lr:
        raise ValueError(f"min_lr: expected 0 <= min_lr <= peak_lr={peak_lr!r}, got {min_lr!r}")
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if total_steps == warmup_steps:
        return float(min_lr)
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
