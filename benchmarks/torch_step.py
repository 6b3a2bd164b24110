"""Time of the token model's training step in PyTorch eager, beside benchmarks/train_step.py.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install -q torch==2.13.0 numpy
    /tmp/torchvenv/bin/python benchmarks/torch_step.py --configs small large
    /tmp/torchvenv/bin/python benchmarks/torch_step.py --check    # same model? (float64)

PyTorch is not a dependency of gla_np: this script is run by hand from a separate venv such as
the one above. It imports gla_np from this checkout (no install needed) for the configs, the
initial weights (``lm.init_params``), the MQAR batch, and the check.

The step is benchmarks/train_step.py's, written with torch tensors and autograd instead of
gla_np's hand-written backward: same configs (``small``, ``large``, ``train``; float32, batch,
length and sizes from train_step.CONFIGS), same weights (the tensors are copies of
``lm.init_params(config, 256, default_rng(0))``), same MQAR batch (drawn next from that rng),
then forward, mean cross-entropy over the target positions only (the head runs only there),
backward, clipping to a global norm of 1, and AdamW (weight decay 0.1 on the matrices only, the
betas and eps of ``optim.AdamW``) at lr 1e-3. The model is gla_np's token model op for op:
embedding; per block a pre-RMSNorm GLA layer (q, k, v, output gate W_r and output W_o without
bias; optional short causal convolution with SiLU on q, k, v; low-rank forget gate with bias,
logsigmoid / normalizer; per-head output RMSNorm with one shared weight; swish output gate) and
a pre-RMSNorm SwiGLU FFN, each with its residual; final RMSNorm; head without bias.

The recurrence is the chunk form (chunks of ``config.chunk_size`` = 64), by default (``--form
naive``) with the naive factoring, the fastest form in PyTorch on a CPU: with b the chunk-local
cumulative sum of the log gates and l its last row, one masked matmul,
``tril((s q e^b)(k e^-b)^T) v``, gives every pair u <= t inside a chunk, the state entering a
chunk is read with q e^b, and
each chunk writes (k e^(l-b))^T v into the state, which decays by e^l. This is exact in exact
arithmetic but unstable at strong gates: e^-b overflows float32 once a channel's log gates sum
below about -88 within one chunk (an average decay below e^-1.4 = 0.25 per token over 64 tokens),
and precision is lost well before. A freshly initialised model (g near -ln(2)/16 per token) is far
from that, but a trained one need not be. gla_np's chunk form uses sub-chunk tiles to stay exact
at any gate; ``--form stable`` is the like-for-like PyTorch version: pairs in earlier sub-chunks
(of 16) factor through the decay at the sub-chunk's start, pairs inside one take e^(b_t - b_u)
channel by channel, so that every exponent is <= 0 (measured about 2.5 times slower than the naive
form on ``small``).

"The same model" means: from the same weights and batch, the same loss and the same gradient of
every parameter, up to rounding. ``--check`` (with ``--form``) verifies it in float64 (both sides
built from the config with dtype float64, a batch of 4 per config): it prints, per parameter, the
relative error ||torch - gla_np|| / ||gla_np|| of the gradient against ``lm.loss_and_grads`` and
of one clipped AdamW update against ``optim``'s, and exits with status 1 if the worst is above
1e-8.

``--interleave`` times gla_np's step (train_step.make_step, under the same process settings
as train_step.py) and PyTorch's alternately, step by step, in this one process, so that both
see the same load at every moment on a shared machine: use it at one thread (at two, PyTorch's
OpenMP threads spin between its steps and take the core that gla_np's second thread needs).

Timing: for each config and thread count (``torch.set_num_threads``; one inter-op thread), min
and median ms per step over ``--repeats`` steps after two warm-up steps, tokens per second at the
median, and the median CPU time of the process per step, in train_step.py's table. Like
train_step.py, the script starts itself again with glibc's malloc keeping freed memory (the
``MALLOC_*`` entries of ``data_parallel.PROCESS_ENV`` and its ``GLIBC_TUNABLES``, the heaps on
huge pages; not its BLAS thread variables, as torch sets its own threads): torch's CPU allocator takes every tensor from malloc too, and without
this a step of ``small`` spent about a quarter of its time faulting fresh pages in (measured:
45 ms instead of 35 ms at one thread). ``--raw`` times the process as started instead.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from gla_np import data_parallel, lm, optim, tasks  # noqa: E402
from gla_np import gla_layer  # noqa: E402
from gla_np.layers.model import GLAConfig  # noqa: E402
from train_step import CONFIGS, VOCAB, cpu_model, make_step, time_steps  # noqa: E402  (this folder)

LR, MAX_NORM, WEIGHT_DECAY = 1e-3, 1.0, 0.1
MALLOC_ENV = {n: v for n, v in data_parallel.PROCESS_ENV.items()  # malloc's settings
              if n.startswith("MALLOC_") or n == "GLIBC_TUNABLES"}
CHECK_BATCH = 4  # sequences per config in --check, to keep it quick
CHECK_TOLERANCE = 1e-8
FORMS = ("naive", "stable")  # of the chunk form's intra-chunk part
SUB_CHUNK = 16  # c of the stable form (16 was faster than 8 on small at one thread)


def make_config(name, dtype):
    """The GLAConfig of train_step.py's config ``name``, in ``dtype``."""
    c = CONFIGS[name]
    return GLAConfig(embed_dim=c["hidden"], hidden_size=c["hidden"], num_layers=c["layers"],
                     num_heads=c["heads"], head_dim=c["head_dim"], expand_factor=2,
                     dropout=0.0, seq_len=c["seq_len"], form="chunk",
                     use_short_conv=c.get("conv", False), dtype=dtype)


def make_problem(name, dtype, batch=None):
    """``(config, params, ids, targets)`` as train_step.make_step draws them (seed 0)."""
    config = make_config(name, dtype)
    rng = np.random.default_rng(0)
    params = lm.init_params(config, VOCAB, rng)
    ids, targets = tasks.mqar(rng, batch or CONFIGS[name]["batch"], seq_len=config.seq_len,
                              num_pairs=8, vocab_size=VOCAB)
    return config, params, ids, targets


def take(params, prefix):
    """The entries of ``params`` under ``prefix``, with the prefix dropped from their names."""
    return {name[len(prefix):]: t for name, t in params.items() if name.startswith(prefix)}


def rms_norm(x, w, eps):
    """x / sqrt(mean(x^2) + eps) * w over the last axis (gla_np.rmsnorm)."""
    return F.rms_norm(x, (x.shape[-1],), w, eps)


def short_conv(z, w):
    """Causal depthwise convolution along time: z (B, T, C), w (W, C) as gla_np stores it."""
    W, C = w.shape
    y = F.conv1d(F.pad(z.mT, (W - 1, 0)), w.mT.unsqueeze(1), groups=C)  # (B, C, T)
    return y.mT


def intra_naive(q, k, v, b):
    """Inside each chunk, every pair u <= t in one masked matmul: tril((q e^b)(k e^-b)^T) v.

    q (already scaled), k, b (B, H, N, C, K); v (B, H, N, C, V). e^-b overflows at strong gates.
    """
    return ((q * b.exp()) @ (k * (-b).exp()).mT).tril() @ v


def intra_stable(q, k, v, b):
    """The same sum with every exponent <= 0, by sub-chunks of ``SUB_CHUNK`` (C a multiple).

    Pairs in earlier sub-chunks factor through r_i, b just before sub-chunk i starts:
    (q_t e^(b_t - r_i)) . (k_u e^(r_i - b_u)), u before sub-chunk i. Pairs inside a sub-chunk
    take e^(b_t - b_u), u <= t, channel by channel: a (c, c, K) tensor per sub-chunk.
    """
    B, H, N, C, K = q.shape
    c, M = SUB_CHUNK, C // SUB_CHUNK
    qs, ks, bs = (a.view(B, H, N, M, c, K) for a in (q, k, b))
    r = F.pad(bs[:, :, :, :-1, -1], (0, 0, 1, 0))[..., None, :]  # (B, H, N, M, 1, K), r_0 = 0
    before = torch.arange(C) < c * torch.arange(M)[:, None]  # (M, C): u before sub-chunk i
    k_ref = k[:, :, :, None] * torch.where(before[..., None], r - b[:, :, :, None],
                                           -math.inf).exp()  # (B, H, N, M, C, K)
    A_off = (qs * (bs - r).exp()) @ k_ref.mT  # (B, H, N, M, c, C)
    causal = torch.ones(c, c, dtype=torch.bool).tril()[..., None]  # (c, c, 1): u <= t
    decay = torch.where(causal, bs[..., :, None, :] - bs[..., None, :, :], -math.inf).exp()
    A_diag = (qs[..., :, None, :] * ks[..., None, :, :] * decay).sum(-1)  # (B, H, N, M, c, c)
    o = A_off @ v[:, :, :, None] + A_diag @ v.view(B, H, N, M, c, -1)
    return o.view(B, H, N, C, -1)


def chunk_gla(q, k, v, g, scale, chunk_size, form):
    """The gated linear recurrence from a zero state, chunk form; ``form`` "naive" or "stable".

    q, k, g (B, H, T, K); v (B, H, T, V); returns o (B, H, T, V). T is zero-padded up to whole
    chunks (and whole sub-chunks for "stable"), which is exact: g = 0 keeps b, q = k = v = 0
    reads and writes nothing. The forms differ only inside a chunk (``intra_naive``,
    ``intra_stable``); the state passing between chunks has exponents <= 0 in both.
    """
    B, H, T, K = q.shape
    C = min(chunk_size, T)
    if form == "stable":
        C = -(-C // SUB_CHUNK) * SUB_CHUNK
    N = -(-T // C)
    if N * C != T:
        q, k, v, g = (F.pad(a, (0, 0, 0, N * C - T)) for a in (q, k, v, g))
    q, k, v, g = (a.reshape(B, H, N, C, a.shape[-1]) for a in (q, k, v, g))
    q = q * scale
    b = g.cumsum(-2)  # (B, H, N, C, K), chunk-local
    l = b[..., -1:, :]  # (B, H, N, 1, K)
    o = (intra_naive if form == "naive" else intra_stable)(q, k, v, b)
    if N > 1:
        # state entering chunk n+1: decayed state entering chunk n plus chunk n's write
        writes = (k[:, :, :-1] * (l[:, :, :-1] - b[:, :, :-1]).exp()).mT @ v[:, :, :-1]
        decays = l[:, :, :-1].mT.exp()  # (B, H, N-1, K, 1)
        S, entering = writes[:, :, 0], [writes[:, :, 0]]
        for n in range(1, N - 1):
            S = decays[:, :, n] * S + writes[:, :, n]
            entering.append(S)
        read = (q[:, :, 1:] * b[:, :, 1:].exp()) @ torch.stack(entering, 2)
        o = torch.cat([o[:, :, :1], o[:, :, 1:] + read], 2)
    return o.reshape(B, H, N * C, -1)[:, :, :T]


def gla_layer_forward(p, x, config, form):
    """One GLA layer with its pre-norm and residual (gla_np.gla_layer): (B, T, D) -> (B, T, D)."""
    H, K, V = gla_layer.head_sizes(config)
    B, T, _ = x.shape
    xn = rms_norm(x, p["norm.w"], config.norm_eps)
    heads = []
    for n in gla_layer.QKV:
        z = xn @ p[f"W_{n}"]
        if config.use_short_conv:
            z = F.silu(short_conv(z, p[f"conv_{n}"]))
        heads.append(z.view(B, T, H, -1).transpose(1, 2))  # (B, H, T, K|V)
    z = (xn @ p["gate.W1"]) @ p["gate.W2"] + p["gate.b2"]
    g = (F.logsigmoid(z) / config.gate_normalizer).view(B, T, H, K).transpose(1, 2)
    o = chunk_gla(*heads, g, K ** -0.5, config.chunk_size, form).transpose(1, 2)  # (B, T, H, V)
    on = rms_norm(o, p["o_norm.w"], gla_layer.output_norm_eps(config)).reshape(B, T, H * V)
    return x + (on * F.silu(xn @ p["W_r"])) @ p["W_o"]


def ffn_forward(p, z, config):
    """The SwiGLU feed-forward part with its pre-norm and residual (gla_np.ffn)."""
    zn = rms_norm(z, p["norm.w"], config.norm_eps)
    return z + (F.silu(zn @ p["W_gate"]) * (zn @ p["W_up"])) @ p["W_down"]


def lm_loss(params, ids, asked, targets, config, form):
    """Mean cross-entropy of the token model (gla_np.lm) over the positions ``asked``.

    ids (B, T) int64, asked (B, T) bool, targets (n,) the targets at the asked positions in
    row-major order. The head runs only at those positions.
    """
    h = F.embedding(ids, params[lm.EMBEDDING])
    for i in range(config.num_layers):
        p = take(params, f"blocks.{i}.")
        h = gla_layer_forward(take(p, "attn."), h, config, form)
        h = ffn_forward(take(p, "ffn."), h, config)
    h = rms_norm(h, params["final_norm.w"], config.norm_eps)
    return F.cross_entropy(h[asked] @ params[lm.HEAD], targets)


def clip_by_global_norm_(tensors, max_norm):
    """Scale the tensors' gradients in place so that their global norm is at most ``max_norm``
    (optim.clip_by_global_norm: multiplied by max_norm / norm, no epsilon)."""
    grads = [t.grad for t in tensors]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if norm > max_norm:
        for g in grads:
            g.mul_(max_norm / norm)


class TorchStep:
    """train_step.py's step in PyTorch: leaf tensors copied from gla_np's params, AdamW."""

    def __init__(self, config, params, ids, targets, form):
        self.config, self.form = config, form
        self.params = {n: torch.from_numpy(p).clone().requires_grad_() for n, p in params.items()}
        asked = targets != tasks.IGNORE
        self.ids, self.asked = torch.from_numpy(ids), torch.from_numpy(asked)
        self.targets = torch.from_numpy(targets[asked])
        hp = optim.AdamW(weight_decay=WEIGHT_DECAY)
        decayed = set(hp.decayed(params))  # the matrices
        self.opt = torch.optim.AdamW(
            [{"params": [t for n, t in self.params.items() if n in decayed],
              "weight_decay": hp.weight_decay},
             {"params": [t for n, t in self.params.items() if n not in decayed],
              "weight_decay": 0.0}],
            lr=LR, betas=(hp.beta1, hp.beta2), eps=hp.eps)

    def loss_and_grads(self):
        """Forward and backward: the loss, and every parameter's ``.grad``."""
        self.opt.zero_grad(set_to_none=True)
        loss = lm_loss(self.params, self.ids, self.asked, self.targets, self.config,
                       self.form)
        loss.backward()
        return loss.detach()

    def update(self):
        """Clip the gradients to a global norm of ``MAX_NORM``, then one AdamW step."""
        clip_by_global_norm_(list(self.params.values()), MAX_NORM)
        self.opt.step()

    def __call__(self):
        loss = self.loss_and_grads()
        self.update()
        return loss


def relative_error(actual, expected):
    """||actual - expected|| / ||expected|| (0 when both are zero)."""
    scale = np.linalg.norm(expected)
    diff = np.linalg.norm(actual - expected)
    return diff / scale if scale else diff


def check(names, form):
    """Compare loss, gradients and one update with gla_np in float64; return the worst error."""
    worst = 0.0
    for name in names:
        config, params, ids, targets = make_problem(name, "float64", CHECK_BATCH)
        loss, grads, _ = lm.loss_and_grads(params, ids, targets, config)
        clipped, norm = optim.clip_by_global_norm(grads, MAX_NORM)
        opt = optim.AdamW(weight_decay=WEIGHT_DECAY)
        stepped, _ = opt.step(params, clipped, opt.init(params), LR)

        step = TorchStep(config, params, ids, targets, form)
        t_loss = step.loss_and_grads().item()
        t_grads = {n: t.grad.numpy().copy() for n, t in step.params.items()}
        step.update()
        errors = {"loss": relative_error(t_loss, loss)}
        print(f"\n{name}: {form} form, float64, batch {CHECK_BATCH}, loss {loss:.12f} (gla_np) "
              f"{t_loss:.12f} (torch), gradient norm {norm:.4g}")
        print(f"  {'parameter':<26} {'shape':<12} {'grad rel err':>12} {'update rel err':>15}")
        for n, p in params.items():
            g_err = relative_error(t_grads[n], grads[n])
            u_err = relative_error(step.params[n].detach().numpy() - p, stepped[n] - p)
            errors[n] = max(g_err, u_err)
            print(f"  {n:<26} {str(p.shape):<12} {g_err:>12.1e} {u_err:>15.1e}")
        bad = max(errors, key=errors.get)
        print(f"  worst: {errors[bad]:.1e} ({bad})")
        worst = max(worst, errors[bad])
    return worst


def machine_summary():
    """torch, its threads and libraries, the CPU and the malloc settings, as one line."""
    libraries = [re.sub(r" \(.*?\)| for .*|-Product.*|\s*:", "", line).strip()
                 for line in torch.__config__.parallel_info().splitlines()
                 if line and not line[0].isspace() and not line.rstrip().endswith(":")
                 and not line.startswith("std::")]
    cpu = cpu_model()
    malloc = ", ".join(f"{n}={os.environ.get(n)}" for n in MALLOC_ENV)
    return (f"torch {torch.__version__}: {', '.join(libraries)}; default threads "
            f"{torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}; "
            f"mkl {torch.backends.mkl.is_available()}, mkldnn "
            f"{torch.backends.mkldnn.is_available()}; machine: {cpu}, {os.cpu_count()} cores; "
            f"Python {platform.python_version()}, NumPy {np.__version__}; {malloc}")


def interleave(names, threads, repeats, form):
    """gla_np's step and PyTorch's, alternately in this process: min and median ms of each."""
    print(f"\n{'config':<7} {'threads':>7} {'gla_np min':>11} {'median':>8} {'torch min':>10} "
          f"{'median':>8} {'ratio':>6}")
    for name in names:
        config, params, ids, targets = make_problem(name, "float32")
        for n in threads:
            torch.set_num_threads(n)
            steps = [make_step(name, n)[0], TorchStep(config, params, ids, targets, form)]
            for step in steps * 2:  # two warm-ups each
                step()
            times = [[], []]
            for _ in range(repeats or (10 if name == "large" else 40)):
                for step, t in zip(steps, times):
                    start = time.perf_counter()
                    step()
                    t.append(time.perf_counter() - start)
            (g_min, g_med), (t_min, t_med) = [(1e3 * min(t), 1e3 * np.median(t)) for t in times]
            print(f"{name:<7} {n:>7} {g_min:>11.1f} {g_med:>8.1f} {t_min:>10.1f} {t_med:>8.1f} "
                  f"{g_med / t_med:>6.2f}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=["small", "large"],
                        help="configs to time (default: small large)")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="thread counts to time (default: 1 and os.cpu_count())")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps per row (default: 40 small and train, 10 large)")
    parser.add_argument("--check", action="store_true",
                        help="instead of timing, compare with gla_np in float64 on every config "
                             "and exit with status 1 if a relative error exceeds "
                             f"{CHECK_TOLERANCE:g}")
    parser.add_argument("--form", choices=FORMS, default="naive",
                        help="the recurrence inside a chunk: naive (one masked matmul, fastest, "
                             "unstable at strong gates) or stable (sub-chunks of "
                             f"{SUB_CHUNK}, every exponent <= 0)")
    parser.add_argument("--interleave", action="store_true",
                        help="time gla_np's step and PyTorch's alternately in this process")
    parser.add_argument("--raw", action="store_true",
                        help="do not restart with the malloc settings of "
                             "data_parallel.PROCESS_ENV")
    args = parser.parse_args(argv)
    env = data_parallel.process_environment(
        os.environ, data_parallel.PROCESS_ENV if args.interleave else MALLOC_ENV)
    if not args.raw and env != dict(os.environ):
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], env)
    torch.set_num_interop_threads(1)  # before any parallel work
    if args.check:
        worst = check(list(CONFIGS), args.form)
        print(f"\nworst relative error {worst:.1e} (tolerance {CHECK_TOLERANCE:g})")
        sys.exit(1 if worst > CHECK_TOLERANCE else 0)
    threads = args.threads or sorted({1, os.cpu_count() or 1})
    print(machine_summary())
    if args.interleave:
        interleave(args.configs, threads, args.repeats, args.form)
        return
    print(f"\n{'config':<7} {'threads':>7} {'min ms':>8} {'median ms':>10} {'tokens/s':>10} "
          f"{'CPU ms':>8}")
    for name in args.configs:
        repeats = args.repeats or (10 if name == "large" else 40)
        config, params, ids, targets = make_problem(name, "float32")
        for n in threads:
            torch.set_num_threads(n)
            times, cpu = time_steps(TorchStep(config, params, ids, targets, args.form), repeats)
            print(f"{name:<7} {n:>7} {1e3 * times.min():>8.1f} {1e3 * np.median(times):>10.1f} "
                  f"{ids.size / np.median(times):>10,.0f} {1e3 * np.median(cpu):>8.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
