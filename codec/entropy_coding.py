"""Range coding (constriction) of quantized symbols under table-driven models.

Three kinds of symbols, each coded exactly under the model that training optimizes:
- integer offsets under a tabulated row (``Tables``), grouped by row so that each group
  is one constriction call; offsets outside the row go through an escape symbol followed
  by the raw value, so nothing is ever clipped;
- Leech lattice points under the exact prior of DESIGN.md section 5: the coset (m, then
  the Golay codeword in three 4-bit pieces), the parity of each q_i given the rest, then
  the offset of each q_i inside its parity class (``LeechCoder``);
- bits under tabulated Bernoulli probabilities (BSQ).
All model arithmetic is elementwise float64 in a fixed order (no BLAS, no libm), so the
decoder rebuilds bit-identical probabilities.
"""

from __future__ import annotations

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


class Decoder:
    """Mirror of :class:`Encoder`; every method raises ``ValueError`` on bad data."""

    def __init__(self, data: bytes) -> None:
        if len(data) % 4:
            raise ValueError("coded section length is not a multiple of 4")
        self.coder = constriction.stream.queue.RangeDecoder(np.frombuffer(data, np.uint32).copy())

    def _decode(self, *args) -> np.ndarray:
        """constriction asserts on some invalid streams: report them as bad data."""
        try:
            return self.coder.decode(*args)
        except (AssertionError, RuntimeError, ValueError) as e:
            raise ValueError(f"corrupt coded section ({e})") from e

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
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    cuts = np.flatnonzero(np.diff(sorted_rows)) + 1
    bounds = np.concatenate([[0], cuts, [len(rows)]])
    spans = zip(bounds[:-1], bounds[1:], strict=True)
    return [(int(sorted_rows[a]), order[a:b]) for a, b in spans if b > a]


def scale_index(sigma: np.ndarray, tab: tables.Tables) -> np.ndarray:
    """Quantized scales: comparisons against stored float64 boundaries only."""
    return np.searchsorted(tab.bounds, np.asarray(sigma, np.float64)).astype(np.int64)


# ---------------------------------------------------------------- Leech lattice points


def _nibble_patterns() -> np.ndarray:
    """(16, 4) bits of each 4-bit pattern."""
    return (np.arange(16)[:, None] >> np.arange(4)) & 1


def _class_masses(scale: np.ndarray, mean_q: np.ndarray) -> np.ndarray:
    """C_i(k) for k = 0..7 from the tables, normalized per coordinate: (n, 24, 8)."""
    k = np.arange(8, dtype=np.int64)
    delta = mean_q[..., None] - k * tables.MEAN_GRID
    phase = delta - tables.PHASES * np.floor_divide(delta, tables.PHASES)
    c = tables.theta_sum()[scale[..., None], phase]
    return c / c.max(axis=-1, keepdims=True)


@lru_cache(maxsize=1)
def _chunk_patterns() -> np.ndarray:
    """(3, 4096): the 8-bit pattern of each codeword on coordinates 8k .. 8k+7."""
    code = leech.golay_code().astype(np.int64)
    weights = 1 << np.arange(8)
    return np.stack([code[:, 8 * k : 8 * k + 8] @ weights for k in range(3)])


def _coset_masses(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Z(m, codeword) up to a per-block factor, for every coset: (n, 2, 4096).

    Each 8-coordinate chunk is tabulated over its 256 patterns (the outer product of two
    16-pattern nibble tables); a codeword's product is then three lookups, always
    multiplied in the same order.
    """
    bits = _nibble_patterns()
    patterns = _chunk_patterns()
    n = a.shape[0]
    out = np.empty((n, 2, patterns.shape[1]), np.float64)
    for m in (0, 1):
        prods = []
        for values in (a, b):
            chunks = []
            for chunk in range(3):
                nibbles = []
                for nib in range(2):
                    cols = slice(8 * chunk + 4 * nib, 8 * chunk + 4 * nib + 4)
                    v = values[:, cols, :][:, np.arange(4)[None, :], m + 2 * bits]  # (n, 16, 4)
                    p = v[..., 0]
                    for j in range(1, 4):
                        p = p * v[..., j]
                    nibbles.append(p)
                # pattern index = lo + 16 * hi
                chunks.append((nibbles[1][:, :, None] * nibbles[0][:, None, :]).reshape(n, 256))
            prods.append(chunks[0][:, patterns[0]] * chunks[1][:, patterns[1]]
                         * chunks[2][:, patterns[2]])
        out[:, m] = np.maximum(0.5 * (prods[0] + (1 - 2 * m) * prods[1]), 0.0)
    return out


def _sum_last(x: np.ndarray) -> np.ndarray:
    """Sum over the last axis in a fixed left-to-right order (no pairwise/SIMD reduction)."""
    total = x[..., 0].copy()
    for i in range(1, x.shape[-1]):
        total += x[..., i]
    return total


def _coset_steps(z: np.ndarray) -> list[np.ndarray]:
    """Marginal tables for coding m, then codeword index bits 11..8, 7..4, 3..0."""
    n = z.shape[0]
    z4 = z.reshape(n, 2, 16, 16, 16)
    s3 = _sum_last(z4)  # (n, 2, 16, 16)
    s2 = _sum_last(s3)  # (n, 2, 16)
    s1 = _sum_last(s2)  # (n, 2)
    return [s1, s2, s3, z4]


def _normalized(p: np.ndarray) -> np.ndarray:
    """Rows with zero total become uniform, so both sides agree on a valid model."""
    total = _sum_last(p)
    flat = total <= 0
    p = np.where(flat[..., None], 1.0, p)
    return np.ascontiguousarray(p)


class LeechCoder:
    """Exact coding of integer-frame Leech points given quantized scales and means.

    ``scale`` indexes ``tables.THETA_SCALES``; ``mean_q`` is the mean in units of
    1 / MEAN_GRID. Both are integer arrays (n, 24) and fully determine the model.
    """

    chunk = 1024

    def encode(self, enc: Encoder, points: np.ndarray, scale: np.ndarray,
               mean_q: np.ndarray) -> None:
        points = points.astype(np.int64)
        m, word = (t.numpy() for t in leech.coset_of(points))
        r = points & 3
        q = (points - r) >> 2
        digits = [m, word >> 8, (word >> 4) & 15, word & 15]
        for lo in range(0, len(points), self.chunk):
            sl = slice(lo, lo + self.chunk)
            masses = _class_masses(scale[sl], mean_q[sl])
            steps = _coset_steps(self._coset(masses))
            idx = np.arange(len(m[sl]))
            for level, table in enumerate(steps):
                sel = (idx,) + tuple(d[sl] for d in digits[:level])
                enc.categorical(digits[level][sl], _normalized(table[sel]))
            self._parities(masses, r[sl], m[sl], q[sl], enc=enc)
        self._offsets(enc, None, points, r, q, scale, mean_q)

    def decode(self, dec: Decoder, scale: np.ndarray, mean_q: np.ndarray) -> np.ndarray:
        n = len(scale)
        r = np.zeros((n, 24), np.int64)
        parity = np.zeros((n, 24), np.int64)
        for lo in range(0, n, self.chunk):
            sl = slice(lo, lo + self.chunk)
            masses = _class_masses(scale[sl], mean_q[sl])
            steps = _coset_steps(self._coset(masses))
            idx = np.arange(len(masses))
            digits: list[np.ndarray] = []
            for table in steps:
                sel = (idx,) + tuple(digits)
                digits.append(dec.categorical(_normalized(table[sel])))
            m = digits[0]
            word = (digits[1] << 8) | (digits[2] << 4) | digits[3]
            r[sl] = leech.coset_residues(torch.from_numpy(m), torch.from_numpy(word)).numpy()
            parity[sl] = self._parities(masses, r[sl], m, None, dec=dec)
        return self._offsets(None, dec, None, r, parity, scale, mean_q)

    @staticmethod
    def _coset(masses: np.ndarray) -> np.ndarray:
        a = masses[..., :4] + masses[..., 4:]
        b = masses[..., :4] - masses[..., 4:]
        return _coset_masses(a, b).reshape(len(masses), -1)

    @staticmethod
    def _parities(masses: np.ndarray, r: np.ndarray, m: np.ndarray, q: np.ndarray | None,
                  enc: Encoder | None = None, dec: Decoder | None = None) -> np.ndarray:
        """Code the parity of q_0..q_22 (q_23's is forced by the coset); returns parities."""
        n = len(r)
        idx = np.arange(n)
        c_even = masses[idx[:, None], np.arange(24)[None, :], r]
        c_odd = masses[idx[:, None], np.arange(24)[None, :], r + 4]
        a, b = c_even + c_odd, c_even - c_odd
        suffix_a = np.ones((n, 25))
        suffix_b = np.ones((n, 25))
        for j in range(23, -1, -1):
            suffix_a[:, j] = suffix_a[:, j + 1] * a[:, j]
            suffix_b[:, j] = suffix_b[:, j + 1] * b[:, j]
        parity = np.zeros((n, 24), np.int64)
        need = m.copy()  # parity that q_j..q_23 must sum to
        for j in range(23):
            sign_even = 1 - 2 * need  # (-1)^(need - 0)
            w_even = c_even[:, j] * (suffix_a[:, j + 1] + sign_even * suffix_b[:, j + 1])
            w_odd = c_odd[:, j] * (suffix_a[:, j + 1] - sign_even * suffix_b[:, j + 1])
            probs = _normalized(np.maximum(np.stack([w_even, w_odd], axis=-1), 0.0))
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
        h0 = np.floor_divide(delta, tables.PHASES)
        phase = delta - tables.PHASES * h0
        rows = (scale * tables.PHASES + phase).reshape(-1)
        tab = tables.theta_tables()
        if enc is not None:
            h = (q_or_parity - parity) >> 1
            enc.table_offsets((h - h0).reshape(-1), rows, tab)
            return points
        d = dec.table_offsets(rows, tab).reshape(r.shape)
        q = 2 * (d + h0) + parity
        return r + 4 * q
