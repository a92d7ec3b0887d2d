"""Range coding (constriction) of quantized symbols under table-driven models.

Three kinds of symbols, each coded exactly under the model that training optimizes:
- integer offsets under a tabulated row (``Tables``), grouped by row so that each group
  is one constriction call; offsets outside the row go through an escape symbol followed
  by the raw value, so nothing is ever clipped;
- Leech lattice points under the exact prior of docs/design.md section 5, in groups of blocks:
  the coset (m, then the Golay codeword through the code's trio of octads: class c0, its
  partner j, complement bits s), the parity of each q_i given the rest, then the offset of
  each q_i inside its parity class (``LeechCoder``). The product of the coded
  probabilities is P(x), exactly as with one 8,192-symbol coset alphabet;
- bits under tabulated Bernoulli probabilities (BSQ).
All model arithmetic is elementwise float64 in a fixed order (no BLAS, no libm), so the
decoder rebuilds bit-identical probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import constriction
import numpy as np
import torch

from lsq.codec import leech, tables

_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)
_RAW = constriction.stream.model.Uniform(1 << 16)
_RAW_BIAS = 1 << 31


class Encoder:
    """A range encoder with the symbol kinds this codec writes."""

    def __init__(self) -> None:
        self.coder = constriction.stream.queue.RangeEncoder()

    def categorical(self, symbols: np.ndarray, probs: np.ndarray) -> None:
        """One symbol per row of ``probs`` (n, K)."""
        if len(symbols):
            self.coder.encode(
                np.ascontiguousarray(symbols, np.int32), _CATEGORICAL,
                np.ascontiguousarray(probs, np.float64),
            )

    def raw(self, values: np.ndarray) -> None:
        """Signed 32-bit values as two uniform 16-bit halves (escape payloads)."""
        v = values.astype(np.int64) + _RAW_BIAS
        halves = np.stack([v >> 16, v & 0xFFFF], axis=-1).reshape(-1)
        if len(halves):
            self.coder.encode(halves.astype(np.int32), _RAW)

    def table_offsets(self, offsets: np.ndarray, rows: np.ndarray, tab: tables.Tables) -> None:
        """Integers under their table rows, one constriction call per distinct row."""
        escapes = []
        for t, where in _groups(rows):
            escape = int(tab.length[t]) - 1
            d = offsets[where] - tab.low[t]
            outside = (d < 0) | (d >= escape)
            symbols = np.where(outside, escape, d).astype(np.int32)
            self.coder.encode(symbols, constriction.stream.model.Categorical(
                tab.row(t), perfect=False))
            escapes.append(d[outside] + tab.low[t])
        if escapes:
            self.raw(np.concatenate(escapes))

    def finish(self) -> bytes:
        return self.coder.get_compressed().tobytes()


class CorruptStreamError(ValueError):
    """The coded bytes are not a valid section: damaged or crafted data, not a bug of lsq."""


class Decoder:
    """Mirror of :class:`Encoder`; every method raises ``CorruptStreamError`` on bad data."""

    def __init__(self, data: bytes) -> None:
        if len(data) % 4:
            raise CorruptStreamError("coded section length is not a multiple of 4")
        self.coder = constriction.stream.queue.RangeDecoder(np.frombuffer(data, np.uint32).copy())

    def _decode(self, *args) -> np.ndarray:
        """constriction asserts on some invalid streams: report them as bad data."""
        try:
            return self.coder.decode(*args)
        except (AssertionError, RuntimeError, ValueError) as e:
            raise CorruptStreamError(f"corrupt coded section ({e})") from e

    def categorical(self, probs: np.ndarray) -> np.ndarray:
        if not len(probs):
            return np.zeros(0, np.int64)
        out = self._decode(_CATEGORICAL, np.ascontiguousarray(probs, np.float64))
        return out.astype(np.int64)

    def raw(self, count: int) -> np.ndarray:
        if not count:
            return np.zeros(0, np.int64)
        halves = self._decode(_RAW, 2 * count).astype(np.int64).reshape(-1, 2)
        return (halves[:, 0] << 16) + halves[:, 1] - _RAW_BIAS

    def table_offsets(self, rows: np.ndarray, tab: tables.Tables) -> np.ndarray:
        out = np.zeros(len(rows), np.int64)
        escaped = []
        for t, where in _groups(rows):
            model = constriction.stream.model.Categorical(tab.row(t), perfect=False)
            symbols = self._decode(model, len(where)).astype(np.int64)
            out[where] = symbols + tab.low[t]
            escaped.append(where[symbols == tab.length[t] - 1])
        if escaped:
            where = np.concatenate(escaped)
            out[where] = self.raw(len(where))
        return out


def _groups(rows: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Positions grouped by table row, rows ascending, positions in order: [(row, where)]."""
    key = rows.astype(np.int16) if rows.max(initial=0) < 1 << 15 else rows
    order = np.argsort(key, kind="stable")  # a radix sort for 16-bit keys
    sorted_rows = rows[order]
    cuts = np.flatnonzero(np.diff(sorted_rows)) + 1
    bounds = np.concatenate([[0], cuts, [len(rows)]])
    spans = zip(bounds[:-1], bounds[1:], strict=True)
    return [(int(sorted_rows[a]), order[a:b]) for a, b in spans if b > a]


def scale_index(sigma: np.ndarray, tab: tables.Tables) -> np.ndarray:
    """Quantized scales: comparisons against stored float64 boundaries only."""
    return np.searchsorted(tab.bounds, np.asarray(sigma, np.float64)).astype(np.int64)


def mean_index(mean: np.ndarray) -> np.ndarray:
    """Lattice means (integer frame) rounded to 1 / MEAN_GRID units, as the coders take them."""
    return np.floor(mean * tables.MEAN_GRID + 0.5).astype(np.int64)


# ---------------------------------------------------------------- Leech lattice points


def _class_masses(scale: np.ndarray, mean_q: np.ndarray) -> np.ndarray:
    """C_i(k) for k = 0..7 from the tables, normalized per coordinate: (n, 24, 8)."""
    k = np.arange(8, dtype=np.int64)
    phase = (mean_q[..., None] - k * tables.MEAN_GRID) & (tables.PHASES - 1)
    c = np.take(tables.theta_sum(), (scale << tables.PHASE_BITS)[..., None] + phase)
    return c / c.max(axis=-1, keepdims=True)


def sum_last(x: np.ndarray) -> np.ndarray:
    """Sum over the last axis in a fixed order (halving while even, then left to right), so
    the result never depends on numpy's SIMD or pairwise reduction."""
    while x.shape[-1] > 1 and x.shape[-1] % 2 == 0:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    total = x[..., 0].copy()
    for i in range(1, x.shape[-1]):
        total += x[..., i]
    return total


def prefix_products(x: np.ndarray) -> np.ndarray:
    """(n, 25): products of x[:, :t] for t = 0..24, left to right."""
    out = np.ones((len(x), 25))
    for t in range(24):
        out[:, t + 1] = out[:, t] * x[:, t]
    return out


def suffix_products(x: np.ndarray) -> np.ndarray:
    """(n, 25): products of x[:, t:] for t = 0..24, right to left."""
    out = np.ones((len(x), 25))
    for t in range(23, -1, -1):
        out[:, t] = out[:, t + 1] * x[:, t]
    return out


def normalized(p: np.ndarray) -> np.ndarray:
    """Rows of masses as constriction takes them: negative rounding residue clipped, each row
    divided by its maximum (constriction fails on rows of tiny total, and the maximum, unlike
    a sum, does not depend on the order of summation), rows of zeros made uniform."""
    p = np.maximum(p, 0.0)
    top = p.max(axis=-1, keepdims=True)
    return np.ascontiguousarray(np.where(top > 0, p / np.where(top > 0, top, 1.0), 1.0))


@dataclass(frozen=True)
class _Trio:
    """The Golay code seen through its trio of octads (coordinates 0-7, 8-15, 16-23).

    Chunk k of a codeword is a class (its 8-bit pattern up to complement: 64 classes, each
    represented by the pattern with bit 0 clear) and a complement bit. Turyn's construction
    makes the code a product: any class c0, one of 8 classes c1 for it, the class c2 fixed
    by (c0, c1), and any 3 complement bits s. Sums over the 4,096 codewords of a product
    over coordinates thus cost 512 products instead of 4,096, and a codeword is coded as
    c0 (64-ary), j (8-ary), s (8-ary).
    """

    rep: np.ndarray  # (64,) class patterns
    nibble_index: np.ndarray  # (4, 64): low, 16 + high nibble of rep and of its complement
    tail_index: np.ndarray  # (2, 8, 64): classes c1 and 64 + c2 of (c0, j), j-major
    second: np.ndarray  # (64, 8) class c1 of (c0, j)
    third: np.ndarray  # (64, 8) class c2 of (c0, j)
    word: np.ndarray  # (64, 8, 8) golay_code() row of (c0, j, s)
    position: np.ndarray  # (4096,) c0 * 64 + j * 8 + s of each golay_code() row


@lru_cache(maxsize=1)
def trio() -> _Trio:
    code = leech.golay_code().astype(np.int64)
    patterns = np.stack([code[:, 8 * k : 8 * k + 8] @ (1 << np.arange(8)) for k in range(3)], 1)
    flip = patterns & 1
    rep, cls = np.unique(patterns ^ (255 * flip), return_inverse=True)
    cls = cls.reshape(patterns.shape)
    s = flip[:, 0] + 2 * flip[:, 1] + 4 * flip[:, 2]
    word = np.lexsort((s, cls[:, 1], cls[:, 0])).reshape(64, 8, 8)
    position = np.empty(len(code), np.int64)
    position[word.reshape(-1)] = np.arange(len(code))
    second, third = cls[word[:, :, 0], 1], cls[word[:, :, 0], 2]
    nibble_index = np.stack([rep & 15, 16 + (rep >> 4), 15 - (rep & 15), 31 - (rep >> 4)])
    return _Trio(rep, nibble_index, np.stack([second.T, 64 + third.T]), second, third, word,
                 position)


def _nibble_products(g: np.ndarray) -> np.ndarray:
    """(..., 6, 16) products over each 4-coordinate nibble of g (..., 24, 2) [coordinate,
    bit], for the 16 bit patterns (pattern index = sum of bit_j 2^j)."""
    g = g.reshape(*g.shape[:-2], 6, 4, 2)
    prod = g[..., 0, :]
    for j in range(1, 4):
        prod = (g[..., j, :, None] * prod[..., None, :]).reshape(*prod.shape[:-1], -1)
    return prod


def _chunk_product(nibbles: np.ndarray, chunk: int, patterns: np.ndarray) -> np.ndarray:
    """Products over chunk ``chunk`` for 8-bit patterns (broadcast against nibbles[..., 0, 0])."""
    lo = np.take_along_axis(nibbles[..., 2 * chunk, :], patterns & 15, axis=-1)
    hi = np.take_along_axis(nibbles[..., 2 * chunk + 1, :], patterns >> 4, axis=-1)
    return lo * hi


class _CosetModel:
    """The coset masses of a chunk of blocks, as the four product functions they combine.

    With a_i(r) = C_i(r) + C_i(r + 4) and b_i(r) = C_i(r) - C_i(r + 4), the mass of coset
    (m, c) is (prod_i a_i(m + 2 c_i) + (-1)^m prod_i b_i(m + 2 c_i)) / 2 (docs/design.md section
    5). Index f = 2 m + (0 for a, 1 for b) picks one product function.
    """

    def __init__(self, masses: np.ndarray) -> None:
        t = trio()
        a = masses[..., :4] + masses[..., 4:]
        b = masses[..., :4] - masses[..., 4:]
        g = np.stack([a[..., 0::2], b[..., 0::2], a[..., 1::2], b[..., 1::2]], axis=1)
        self.nibbles = _nibble_products(g)  # (n, 4, 6, 16)
        n = len(masses)
        x = np.take(self.nibbles.reshape(n, 4, 3, 32), t.nibble_index, axis=-1)
        # class masses, both complements: (n, 4, 3, 64)
        self.alpha = x[..., 0, :] * x[..., 1, :] + x[..., 2, :] * x[..., 3, :]
        tail = np.take(self.alpha[:, :, 1:].reshape(n, 4, 128), t.tail_index, axis=-1)
        self.tail = sum_last(np.moveaxis(tail[:, :, 0] * tail[:, :, 1], -2, -1))  # (n, 4, 64)
        self.total = sum_last(self.alpha[:, :, 0] * self.tail)  # (n, 4)

    @staticmethod
    def _signed(x: np.ndarray, m: np.ndarray) -> np.ndarray:
        """a-part + (-1)^m b-part of x (n, 2, ...) [a, b]."""
        sign = (1 - 2 * m).reshape((-1,) + (1,) * (x.ndim - 2))
        return x[:, 0] + sign * x[:, 1]

    def m_probs(self) -> np.ndarray:
        return normalized(np.stack([self.total[:, 0] + self.total[:, 1],
                                    self.total[:, 2] - self.total[:, 3]], axis=-1))

    def c0_probs(self, m: np.ndarray) -> np.ndarray:
        f = self._pair(m)
        return normalized(self._signed((self.alpha[:, :, 0] * self.tail)[f], m))

    def j_probs(self, m: np.ndarray, c0: np.ndarray) -> np.ndarray:
        t = trio()
        f = self._pair(m)
        alpha = self.alpha[f]  # (n, 2, 3, 64)
        second = np.take_along_axis(alpha[:, :, 1], t.second[c0][:, None, :], axis=-1)
        third = np.take_along_axis(alpha[:, :, 2], t.third[c0][:, None, :], axis=-1)
        return normalized(self._signed(second * third, m))

    def s_probs(self, m: np.ndarray, c0: np.ndarray, j: np.ndarray) -> np.ndarray:
        t = trio()
        nibbles = self.nibbles[self._pair(m)]  # (n, 2, 6, 16)
        s = np.arange(8)
        prod = None
        for k, cls in enumerate((c0, t.second[c0, j], t.third[c0, j])):
            patterns = t.rep[cls][:, None] ^ (255 * ((s >> k) & 1))  # (n, 8)
            term = _chunk_product(nibbles, k, np.broadcast_to(patterns[:, None], (len(m), 2, 8)))
            prod = term if prod is None else prod * term
        return normalized(self._signed(prod, m))

    @staticmethod
    def _pair(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index (rows, functions) selecting [a, b] of each block's coset type m."""
        return np.arange(len(m))[:, None], 2 * m[:, None] + np.arange(2)


class LeechCoder:
    """Exact coding of integer-frame Leech points given quantized scales and means.

    ``scale`` indexes ``tables.THETA_SCALES``; ``mean_q`` is the mean in units of
    1 / MEAN_GRID. Both are integer arrays (n, 24) and fully determine the model.
    """

    group = 16384  # blocks coded together: cosets, then parities, then offsets
    chunk = 128  # blocks per coset-model evaluation, small enough to stay in cache

    def encode(self, enc: Encoder, points: np.ndarray, scale: np.ndarray,
               mean_q: np.ndarray) -> None:
        for sl in self._group_slices(len(points)):
            self._encode_group(enc, points[sl].astype(np.int64), scale[sl], mean_q[sl])

    def decode(self, dec: Decoder, scale: np.ndarray, mean_q: np.ndarray) -> np.ndarray:
        return np.concatenate([self._decode_group(dec, scale[sl], mean_q[sl])
                               for sl in self._group_slices(len(scale))])

    def _group_slices(self, n: int) -> list[slice]:
        return [slice(lo, lo + self.group) for lo in range(0, max(n, 1), self.group)]

    def _encode_group(self, enc: Encoder, points: np.ndarray, scale: np.ndarray,
                      mean_q: np.ndarray) -> None:
        m, word = (t.numpy() for t in leech.coset_of(points))
        position = trio().position[word]
        c0, j, s = position >> 6, (position >> 3) & 7, position & 7
        masses = _class_masses(scale, mean_q)
        for lo in range(0, len(points), self.chunk):
            sl = slice(lo, lo + self.chunk)
            model = _CosetModel(masses[sl])
            enc.categorical(m[sl], model.m_probs())
            enc.categorical(c0[sl], model.c0_probs(m[sl]))
            enc.categorical(j[sl], model.j_probs(m[sl], c0[sl]))
            enc.categorical(s[sl], model.s_probs(m[sl], c0[sl], j[sl]))
        r = points & 3
        q = (points - r) >> 2
        self._parities(masses, r, m, q, enc=enc)
        self._offsets(enc, None, points, r, q, scale, mean_q)

    def _decode_group(self, dec: Decoder, scale: np.ndarray, mean_q: np.ndarray) -> np.ndarray:
        n = len(scale)
        m = np.zeros(n, np.int64)
        word = np.zeros(n, np.int64)
        masses = _class_masses(scale, mean_q)
        for lo in range(0, n, self.chunk):
            sl = slice(lo, lo + self.chunk)
            model = _CosetModel(masses[sl])
            m[sl] = dec.categorical(model.m_probs())
            c0 = dec.categorical(model.c0_probs(m[sl]))
            j = dec.categorical(model.j_probs(m[sl], c0))
            word[sl] = trio().word[c0, j, dec.categorical(model.s_probs(m[sl], c0, j))]
        r = leech.coset_residues(torch.from_numpy(m), torch.from_numpy(word)).numpy()
        parity = self._parities(masses, r, m, None, dec=dec)
        return self._offsets(None, dec, None, r, parity, scale, mean_q)

    @staticmethod
    def _parities(masses: np.ndarray, r: np.ndarray, m: np.ndarray, q: np.ndarray | None,
                  enc: Encoder | None = None, dec: Decoder | None = None) -> np.ndarray:
        """Code the parity of q_0..q_22 (q_23's is forced by the coset); returns parities."""
        n = len(r)
        idx = np.arange(n)
        c_even = masses[idx[:, None], np.arange(24)[None, :], r]
        c_odd = masses[idx[:, None], np.arange(24)[None, :], r + 4]
        suffix_a, suffix_b = suffix_products(c_even + c_odd), suffix_products(c_even - c_odd)
        parity = np.zeros((n, 24), np.int64)
        need = m.copy()  # parity that q_j..q_23 must sum to
        for j in range(23):
            sign_even = 1 - 2 * need  # (-1)^(need - 0)
            w_even = c_even[:, j] * (suffix_a[:, j + 1] + sign_even * suffix_b[:, j + 1])
            w_odd = c_odd[:, j] * (suffix_a[:, j + 1] - sign_even * suffix_b[:, j + 1])
            probs = normalized(np.stack([w_even, w_odd], axis=-1))
            if enc is not None:
                parity[:, j] = q[:, j] & 1
                enc.categorical(parity[:, j], probs)
            else:
                parity[:, j] = dec.categorical(probs)
            need = need ^ parity[:, j]
        parity[:, 23] = need
        return parity

    @staticmethod
    def _offsets(enc: Encoder | None, dec: Decoder | None, points: np.ndarray | None,
                 r: np.ndarray, q_or_parity: np.ndarray, scale: np.ndarray,
                 mean_q: np.ndarray) -> np.ndarray:
        """Code h - h0 where q = 2h + parity, under the theta row of the class r + 4 parity."""
        parity = q_or_parity & 1
        cls = r + 4 * parity
        delta = mean_q - cls * tables.MEAN_GRID
        h0 = delta >> tables.PHASE_BITS
        phase = delta & (tables.PHASES - 1)
        rows = ((scale << tables.PHASE_BITS) + phase).reshape(-1)
        tab = tables.theta_tables()
        if enc is not None:
            h = (q_or_parity - parity) >> 1
            enc.table_offsets((h - h0).reshape(-1), rows, tab)
            return points
        d = dec.table_offsets(rows, tab).reshape(r.shape)
        q = 2 * (d + h0) + parity
        return r + 4 * q
