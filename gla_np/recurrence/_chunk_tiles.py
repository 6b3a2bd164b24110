"""Intra-chunk attention over the past pairs, by halving the chunk: the inner part of ``chunked``.

Inside one chunk, with b the chunk-local inclusive cumsum of the log gates and qs = scale * q,
the past pairs u < t add

    o_t = sum_{u < t} A[t, u] v_u,     A[t, u] = sum_i qs_t[i] k_u[i] exp(b_t[i] - b_u[i]).

(The pair u = t holds no gate, exp(0) = 1; ``chunked`` adds it as (qs_t . k_t) v_t.) The decay
sits inside the sum over the key channel i, so A is not one matmul of q and k, and the tempting
factoring exp(b_t) * exp(-b_u) overflows once the gates are strong. Instead, cut a block of rows
into two halves. Every query t of the second half comes after every key u of the first, so the
last row p of the first half lies between them: u <= p < t. b never increases, so
b_t <= b_p <= b_u and

    exp(b_t - b_u) = exp(b_t - b_p) * exp(b_p - b_u)        both factors <= 1:

the pairs across the halves are one matmul of (qs * exp(b - b_p)) and (k * exp(b_p - b)). The
pairs inside each half are the same problem on half the rows: halve again. (The paper's
secondary chunking cuts the chunk once into sub-chunks, each against all earlier keys with its
own reference row; halving applies the same argument at every scale.) The halving goes on,
every level batched over all blocks of all chunks at once, until a block has at most c rows
(the tile size c, ``chunked``'s ``sub_chunk_size``). A tile's own pairs have no row between
all of them (its rows are queries and keys at once), so they use exp(b_t - b_u) itself,
elementwise, one distance d = t - u at a time: rows d.. of every tile against the rows d before
them. Only past pairs are ever formed.

Mild blocks. Where the gates of a block are mild, its pairs need no halving: through the
block's first row, exp(b_t - b_u) = exp(b_t - b_first) * exp(b_first - b_u) with a query
factor in [exp(-span), 1] and a key factor in [1, exp(span)], span = max over the channels of
b_first - b_last (the gates of the block's rows after its first), and all the block's pairs are
one matmul with the pairs u >= t masked to 0. Before each level is halved, if every block of
the level spans at most ``_span_limit`` (a bound that keeps every number the matmul makes
finite, the masked pairs included, and both factors well inside the dtype's range), the whole
level is done so and the halving stops. A fresh layer's chunk of 64 is one matmul; strong gates
are halved as below. For ``chunked``, a chunk that is one mild block (``forward_keeping``)
also puts its pairs u = t on the matmul's diagonal (mask u <= t; their factors multiply to 1),
and writes the pieces of its matmul into arrays the caller keeps (``MildChunks``), which
``backward_keeping`` uses as they are instead of making them again.

Apart from those bounded exponents, every exponent evaluated is <= 0. A chunk whose length is
not a tile size times a power of two is padded with rows after its end (gates 0, q, k, v zero)
and the padding cut off again. Each level costs about C K exps and two matmuls per chunk; the
tiles about (c - 1) K / 2 per row; see docs/derivations/recurrence/chunked.md for the
measurements behind the default c.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np


def _padded_length(C, c):
    """The length C' >= C the halving works on: a tile size <= c times a power of two."""
    halvings = 0
    while -(-C // 2 ** halvings) > c:
        halvings += 1
    return -(-C // 2 ** halvings) * 2 ** halvings


def _pad_rows(arrays, b, length):
    """Pad the row axis (-2) of ``arrays`` with zeros and of b with its last row, to ``length``.

    A padded row comes after every real row, so it is never a key of a real query; b repeated
    keeps every exponent b_t - b_u <= 0 (a zero would make them positive).
    """
    widths = [(0, 0)] * (b.ndim - 2) + [(0, length - b.shape[-2]), (0, 0)]
    return [np.pad(x, widths) for x in arrays], np.pad(b, widths, mode="edge")


def _halves(x, size):
    """(..., C, X) -> (..., C / size, 2, size / 2, X): blocks of ``size`` rows, each as its two
    halves (a view)."""
    return x.reshape(*x.shape[:-2], x.shape[-2] // size, 2, size // 2, x.shape[-1])


def _tiles(x, size):
    """(..., C, X) -> (..., C / size, size, X): tiles of ``size`` rows (a view)."""
    return x.reshape(*x.shape[:-2], x.shape[-2] // size, size, x.shape[-1])


def times_transposed(a, b, out=None):
    """a @ b^T over the last two axes, through a C-order copy of b^T. The same product (with
    OpenBLAS, bit for bit at the mild blocks' shapes), but NumPy's batched matmul with a
    transposed second operand measured 1.5 to 1.8 times slower on float32 (64, 64) blocks than
    with a C-order one, and the copy costs far less. The halving's pairs across halves keep
    ``@`` (there the two orders round differently)."""
    return np.matmul(a, np.ascontiguousarray(b.swapaxes(-1, -2)), out=out)


def _across_halves(b_half):
    """The two factors of the pairs across the halves of every block, b_half (..., 2, size/2, K).

    The reference row p is the last row of the first half: exp(b_t - b_p) for the queries t of
    the second half and exp(b_p - b_u) for the keys u of the first, both (..., size/2, K), <= 1.
    """
    b_p = b_half[..., 0, -1:, :]  # (..., 1, K)
    return np.exp(b_half[..., 1, :, :] - b_p), np.exp(b_p - b_half[..., 0, :, :])


def _across(qs, k, b, size):
    """Every block of ``size`` rows, its pairs across the halves: (A, q_ref, k_ref, q_decay,
    k_decay), A (..., C/size, size/2, size/2) = q_ref @ k_ref^T with q_ref = qs * q_decay the
    queries of the second halves and k_ref = k * k_decay the keys of the first (factors <= 1)."""
    q_decay, k_decay = _across_halves(_halves(b, size))  # (..., C/size, size/2, K) each
    q_ref = _halves(qs, size)[..., 1, :, :] * q_decay
    k_ref = _halves(k, size)[..., 0, :, :] * k_decay
    return q_ref @ k_ref.swapaxes(-1, -2), q_ref, k_ref, q_decay, k_decay


def _span_limit(dtype, width, *arrays):
    """The widest log-gate span a block may have for its pairs to be one masked matmul (M3).

    docs/derivations/recurrence/chunked.md, "Mild blocks: one matmul": with mag the largest
    magnitude in ``arrays`` (at least 1) and ``width`` at least the block's rows and the
    channels K and V, every number the one-matmul form makes is at most
    width^2 mag^3 exp(span) in size (M2); the limit
    keeps that below half the dtype's largest number, and exp(span) below its fourth root.
    nan or inf in the arrays give -inf or nan: no block qualifies (a comparison with nan is
    False).
    """
    info = np.finfo(dtype)
    mag = max([1.0] + [float(max(x.max(), -x.min())) for x in arrays])
    room = math.log(float(info.max) / 2) - 2 * math.log(width) - 3 * math.log(mag)
    return min(math.log(float(info.max)) / 4, room)


def _widest_span(b, size):
    """The largest log-gate span b_first - b_last over every block of ``size`` rows and channel
    (the block's first and last rows): the bound of the exponents of (M1)."""
    b_blocks = _tiles(b, size)
    return float(np.max(b_blocks[..., 0, :] - b_blocks[..., -1, :]))


@functools.lru_cache(maxsize=None)
def _past_mask(size, dtype, with_self=False):
    """The 0/1 (size, size) matrix [t, u] = 1 if u < t, or u <= t ``with_self`` (made once,
    never written to)."""
    mask = np.tril(np.ones((size, size), dtype=dtype), k=0 if with_self else -1)
    mask.flags.writeable = False
    return mask


class MildChunks(NamedTuple):
    """The pieces of the one masked matmul of chunks that are each one mild block (``_in_blocks``
    at size = C), made by ``forward_keeping`` into arrays the caller owns, so that
    ``backward_keeping`` uses them instead of making them again (``chunked`` keeps them in its
    cache)."""

    A: np.ndarray  # (..., C, C): (q_ref @ k_ref^T) * [u <= t], the pairs u = t included
    q_ref: np.ndarray  # (..., C, K): qs * q_decay
    k_ref: np.ndarray  # (..., C, K): k * k_decay
    q_decay: np.ndarray  # (..., C, K): exp(b_t - b_first) in [exp(-span), 1]
    k_decay: np.ndarray  # (..., C, K): exp(b_first - b_u) in [1, exp(span)]

    @classmethod
    def empty(cls, lead, C, K, dtype):
        """Arrays to fill, for chunks (*lead, C, K)."""
        return cls(np.empty((*lead, C, C), dtype), *(np.empty((*lead, C, K), dtype)
                                                       for _ in range(4)))

    def take(self, index):
        """The pieces of some chunks: every array indexed by ``index`` (views)."""
        return MildChunks(*(x[index] for x in self))


def _in_blocks(qs, k, b, size, out=None, with_self=False):
    """Every past pair of every block of ``size`` rows as one matmul through the block's first
    row: (A, q_ref, k_ref, q_decay, k_decay), A (..., C/size, size, size) = q_ref @ k_ref^T
    times the mask u < t, q_ref = qs * exp(b - b_first) (factors <= 1), k_ref = k *
    exp(b_first - b) (factors <= exp(span)). Only for mild blocks, whose span is below
    ``_span_limit``. ``out``: a MildChunks (size = C) to write the five arrays into.
    ``with_self``: A keeps the pairs u = t too (mask u <= t), whose factors multiply to 1."""
    b_blocks = _tiles(b, size)
    A, q_ref, k_ref, q_decay, k_decay = (None,) * 5 if out is None else (
        _tiles(x, size) for x in out)
    # b_t - b_first (..., C/size, size, K), <= 0
    q_decay = np.subtract(b_blocks, b_blocks[..., :1, :], out=q_decay)
    k_decay = np.negative(q_decay, out=k_decay)
    np.exp(k_decay, out=k_decay)  # exp(b_first - b_u) in [1, exp(span)]   (M1)
    np.exp(q_decay, out=q_decay)  # exp(b_t - b_first) in [exp(-span), 1]
    q_ref = np.multiply(_tiles(qs, size), q_decay, out=q_ref)
    k_ref = np.multiply(_tiles(k, size), k_decay, out=k_ref)
    A = times_transposed(q_ref, k_ref, out=A)  # q_ref @ k_ref^T, every entry finite: (M2), (M3)
    A *= _past_mask(size, A.dtype, with_self)  # the pairs u > t (and u = t): finite times 0 is 0
    return A, q_ref, k_ref, q_decay, k_decay


def _tiles_of(kept, size):
    """The arrays of a MildChunks as blocks of ``size`` rows, in ``_in_blocks``'s order."""
    return [_tiles(x, size) for x in kept]


def _mild_backward(do, v, A, q_ref, k_ref, q_decay, k_decay):
    """The gradients (dqs, dk, dv) of mild blocks, as blocks (..., C/size, size, .), from the
    pieces of their one masked matmul (``_in_blocks``)."""
    # mild blocks, one masked matmul: A = (q_ref @ k_ref^T) * mask, o += A v
    # so: dA = (do v^T) * mask,  dv += A^T do,  dq_ref = dA k_ref,  dk_ref = dA^T q_ref
    size = A.shape[-1]
    do_blocks, v_blocks = _tiles(do, size), _tiles(v, size)
    dA = times_transposed(do_blocks, v_blocks)  # do v^T (..., C/size, size, size), finite: (M2)
    dA *= _past_mask(size, dA.dtype)
    return (q_decay * (dA @ k_ref), k_decay * (dA.swapaxes(-1, -2) @ q_ref),
            A.swapaxes(-1, -2) @ do_blocks)


def _in_tiles(qs_tile, k_tile, b_tile, d):
    """Inside the tiles, the pairs at distance d (u = t - d): (A_d, k_seen, decay), A_d
    (..., C/size, size-d) = qs_t . k_seen[t] with k_seen[t] = decay[t] * k_u, k_u decayed to
    row t, and decay = exp(b_t - b_u) <= 1 (..., C/size, size-d, K)."""
    decay = np.exp(b_tile[..., d:, :] - b_tile[..., :-d, :])
    k_seen = decay * k_tile[..., :-d, :]
    return np.einsum("...tk,...tk->...t", qs_tile[..., d:, :], k_seen), k_seen, decay


def forward(qs, k, v, b, c):
    """The past pairs' output o (..., C, V) from qs, k, b (..., C, K) and v (..., C, V).

    o_t = sum_{u < t} A[t, u] v_u with A as in the module docstring, c the largest tile.
    """
    return _forward(qs, k, v, b, c, None, False)[0]


def forward_keeping(qs, k, v, b, c, keep=None, out=None):
    """``forward`` for ``chunked``: return ``(o, whole)``, whole True when the chunk is one mild
    block (its first level, C > c rows, no padding). Then its matmul also has the pairs u = t
    on its diagonal (mask u <= t), so o holds them too, and its pieces are written into
    ``keep`` if given (a MildChunks of arrays (..., C, .)); otherwise o is the past pairs.
    ``out``: a C-contiguous array like v to write o into (then returned as o)."""
    return _forward(qs, k, v, b, c, keep, True, out)


def _forward(qs, k, v, b, c, keep, with_self, out=None):
    """``forward_keeping``, the pairs u = t put on a whole chunk's diagonal ``with_self``."""
    C = qs.shape[-2]
    size = _padded_length(C, c)
    if size != C:
        (qs, k, v), b = _pad_rows([qs, k, v], b, size)
        o = forward(qs, k, v, b, c)[..., :C, :]
        if out is not None:
            out[...] = o
        return (o if out is None else out), False
    limit = _span_limit(qs.dtype, max(size, *qs.shape[-1:], *v.shape[-1:]), qs, k, v)
    if size > c and _widest_span(b, size) <= limit:
        # the first level is mild: every pair of the chunk, one masked matmul, A v the output
        A = _in_blocks(qs, k, b, size, keep, with_self)[0]  # (..., 1, C, C)
        o = np.matmul(A, _tiles(v, size), out=None if out is None else _tiles(out, size))
        return o.reshape(v.shape), True
    if out is None:
        o = np.zeros(v.shape, dtype=v.dtype)  # C order: the views below write into it
    else:
        o = out
        o[...] = 0
    while size > c:
        if _widest_span(b, size) <= limit:
            # mild blocks: every past pair of every block of `size` rows, one masked matmul
            A = _in_blocks(qs, k, b, size)[0]  # (..., C/size, size, size)
            _tiles(o, size)[...] += A @ _tiles(v, size)
            return o, False
        # the pairs across the two halves of every block of `size` rows: one matmul, factors <= 1
        A = _across(qs, k, b, size)[0]  # (..., C/size, size/2, size/2)
        _halves(o, size)[..., 1, :, :] += A @ _halves(v, size)[..., 0, :, :]
        size //= 2
    qs_tile, k_tile, v_tile, b_tile, o_tile = (_tiles(x, size) for x in (qs, k, v, b, o))
    for d in range(1, size):
        # inside the tiles, the pairs at distance d: o_t += A[t, t - d] v_{t-d}
        A_d = _in_tiles(qs_tile, k_tile, b_tile, d)[0]  # (..., C/size, size-d)
        o_tile[..., d:, :] += A_d[..., None] * v_tile[..., :-d, :]
    return o, False


def backward(do, qs, k, v, b, c):
    """Gradients of o = forward(qs, k, v, b, c): return (dqs, dk, dv), like the inputs.

    do, v (..., C, V); qs, k, b (..., C, K). Every block's factors and A are rebuilt from b as
    in ``forward`` and used at once. With dA[t, u] = do_t . v_u
    (docs/derivations/recurrence/chunked.md, step B3):

        dv_u  = sum_{t > u} A[t, u] do_t
        dqs_t = sum_{u < t} dA[t, u] exp(b_t - b_u) * k_u
        dk_u  = sum_{t > u} dA[t, u] exp(b_t - b_u) * qs_t
    """
    return backward_keeping(do, qs, k, v, b, c)[:3]


def backward_keeping(do, qs, k, v, b, c, kept=None):
    """``backward`` for ``chunked``: return ``(dqs, dk, dv, with_self)``. ``kept``, the
    MildChunks ``forward_keeping`` filled, is used as it is where do leaves room for it ((M3)
    with do's magnitude too); its A has the pairs u = t, so dv then holds their A_self do too
    (with_self True). dqs and dk are the past pairs' alone either way (dA masked to u < t)."""
    C = qs.shape[-2]
    size = _padded_length(C, c)
    width = max(size, *qs.shape[-1:], *v.shape[-1:])
    if kept is not None and _widest_span(b, C) <= _span_limit(qs.dtype, width, do):
        # the forward's one matmul per chunk passed (M3) for qs, k, v; do passes it too
        parts = _mild_backward(do, v, *_tiles_of(kept, C))
        return (*[part.reshape(x.shape) for x, part in zip((qs, k, v), parts)], True)
    return (*_backward(do, qs, k, v, b, c, size, width), False)


def _backward(do, qs, k, v, b, c, size, width):
    """``backward``, every piece made here (size: the padded chunk length, width as (M2))."""
    C = qs.shape[-2]
    if size != C:
        (do, qs, k, v), b = _pad_rows([do, qs, k, v], b, size)
        return [x[..., :C, :] for x in backward(do, qs, k, v, b, c)]
    # C order: the views below write into them
    dqs, dk, dv = (np.zeros(x.shape, dtype=x.dtype) for x in (qs, k, v))
    limit = _span_limit(qs.dtype, width, qs, k, v, do)
    while size > c:
        if _widest_span(b, size) <= limit:
            parts = _mild_backward(do, v, *_in_blocks(qs, k, b, size))
            if size == C:  # the first level: nothing added yet, these are the gradients
                return [part.reshape(total.shape) for total, part in zip((dqs, dk, dv), parts)]
            for total, part in zip((dqs, dk, dv), parts):
                _tiles(total, size)[...] += part
            return dqs, dk, dv
        # across the halves: A = q_ref @ k_ref^T, o_second += A v_first
        # so: dA = do_second v_first^T,  dv_first += A^T do_second,
        #     dq_ref = dA k_ref,  dk_ref = dA^T q_ref,  then times the factors
        A, q_ref, k_ref, q_decay, k_decay = _across(qs, k, b, size)
        do_second, v_first = _halves(do, size)[..., 1, :, :], _halves(v, size)[..., 0, :, :]
        dA = do_second @ v_first.swapaxes(-1, -2)  # (..., C/size, size/2, size/2)
        _halves(dv, size)[..., 0, :, :] += A.swapaxes(-1, -2) @ do_second
        _halves(dqs, size)[..., 1, :, :] += q_decay * (dA @ k_ref)
        _halves(dk, size)[..., 0, :, :] += k_decay * (dA.swapaxes(-1, -2) @ q_ref)
        size //= 2
    qs_tile, k_tile, v_tile, b_tile, do_tile = (_tiles(x, size) for x in (qs, k, v, b, do))
    dqs_tile, dk_tile, dv_tile = (_tiles(x, size) for x in (dqs, dk, dv))  # views: += writes
    for d in range(1, size):
        # inside the tiles at distance d: A[t, u] = qs_t . (decay[t] * k_u),  u = t - d
        # so: dA[t, u] = do_t . v_u,  dv_u += A[t, u] do_t,
        #     dqs_t += dA[t, u] decay[t] * k_u,  dk_u += dA[t, u] decay[t] * qs_t
        A_d, k_seen, decay = _in_tiles(qs_tile, k_tile, b_tile, d)
        A_d = A_d[..., None]
        dA_d = np.einsum("...tv,...tv->...t", do_tile[..., d:, :], v_tile[..., :-d, :])[..., None]
        dv_tile[..., :-d, :] += A_d * do_tile[..., d:, :]
        dqs_tile[..., d:, :] += dA_d * k_seen
        decay *= dA_d
        dk_tile[..., :-d, :] += np.multiply(decay, qs_tile[..., d:, :], out=decay)
    return dqs, dk, dv
