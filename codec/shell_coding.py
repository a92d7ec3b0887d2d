"""Exact range coding of first-shell points (Λ24-SQ) under the shell prior P_S.

P_S(x) = prod_i phi_i(x_i) / Z_S over the 196,560 minimal vectors (``shell_prior``). A point
is coded as its shape (pair, octad or odd), then
- (±4, ±4, 0^22): the coordinate pair (276-ary), then both signs (4-ary);
- (±2^8, 0^16): the octad (759-ary), then the signs of its first seven coordinates, each
  given the parity the remaining ones must make up (the eighth is forced);
- (∓3, ±1^23): the Golay codeword through the trio (class c0, partner j, complement bits s,
  as ``LeechCoder`` codes cosets), then the position of the ∓3 (24-ary).
Every step codes the exact conditional masses, so the coded probabilities multiply to
P_S(x). A coordinate's masses phi(k) / phi(k*) (k = -4..4, k* the mode) are q^E for an
integer E, assembled from ``tables.shell_powers``; the sums over pairs, octads and codewords
are sums of products of non-negative terms in a fixed order (no cancellation, no libm, no
BLAS), so encoder and decoder rebuild bit-identical probabilities on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from lsq.codec import leech, tables
from lsq.codec.entropy_coding import (
    Decoder,
    Encoder,
    normalized,
    prefix_products,
    suffix_products,
    sum_last,
    trio,
)

_PAIRS = 276
_OCTADS = 759
_N_PAIR = 4 * _PAIRS  # shell_index order: pairs x 4 signs, octads x 128 signs, odd points
_ODD_START = _N_PAIR + 128 * _OCTADS
_MEAN_LIMIT = 1 << 40  # beyond, every mass off the mode is 0 anyway: clipping changes nothing
_EXPONENT_LIMIT = 64**tables.SHELL_DIGITS - 1  # q^E is 0 (below SHELL_MIN_POWER) for larger E
_AT = 4  # the masses of the values -4..4 sit in columns _AT - 4 .. _AT + 4


@dataclass(frozen=True)
class _Layout:
    """Index tables of the shapes, built once."""

    pair_first: np.ndarray  # (276,) lexicographic pairs i < j, as leech.shell_point orders them
    pair_second: np.ndarray
    by_gap: np.ndarray  # (276,) position in gap-major order (j - i, then i) of each pair
    octads: np.ndarray  # (759, 8) coordinates
    chunk_low: np.ndarray  # (3 U,) for the U patterns octads cut out of each trio chunk:
    chunk_high: np.ndarray  # rows of their low and high nibbles in the (nibble, pattern) tables
    octad_chunks: np.ndarray  # (3, 759) rows of the chunk patterns of each octad
    code: np.ndarray  # (4096, 24) bool Golay codewords


@lru_cache(maxsize=1)
def _layout() -> _Layout:
    first, second = np.triu_indices(24, k=1)
    gap_order = np.lexsort((first, second - first))
    by_gap = np.empty(_PAIRS, np.int64)
    by_gap[gap_order] = np.arange(_PAIRS)
    octads = leech.octads()
    masks = (1 << octads).sum(1)
    patterns = [(masks >> (8 * k)) & 255 for k in range(3)]
    used = [np.unique(p) for p in patterns]
    width = max(len(u) for u in used)
    chunk_patterns = np.stack([np.pad(u, (0, width - len(u))) for u in used])  # (3, U)
    nibble = 16 * (2 * np.arange(3)[:, None])
    octad_chunks = np.stack([k * width + np.searchsorted(used[k], patterns[k]) for k in range(3)])
    return _Layout(first, second, by_gap, octads,
                   (nibble + (chunk_patterns & 15)).reshape(-1),
                   (nibble + 16 + (chunk_patterns >> 4)).reshape(-1),
                   octad_chunks, leech.golay_code().astype(bool))


def point_masses(scale: np.ndarray, mean_q: np.ndarray) -> np.ndarray:
    """phi_i(k) / phi_i(k*) for k = -4..4 (last axis), k* the value nearest the mean.

    scale (n, 24) indexes THETA_SCALES, mean_q (n, 24) is the mean in units of 1 / MEAN_GRID.
    With K = MEAN_GRID, the ratio is q^E, E = (K k - m)^2 - (K k* - m)^2 >= 0, q^E the product
    of one ``shell_powers`` entry per base-64 digit of E. Returns (n, 24, 9) float64, each 0 or
    in [SHELL_MIN_POWER, 1].
    """
    grid = tables.MEAN_GRID
    m = np.clip(mean_q.astype(np.int64), -_MEAN_LIMIT, _MEAN_LIMIT)[..., None]
    mode = np.clip((m + grid // 2) // grid, -4, 4)
    k = np.arange(-4, 5)
    exponent = np.minimum(grid * (k - mode) * (grid * (k + mode) - 2 * m), _EXPONENT_LIMIT)
    powers = tables.shell_powers().reshape(-1)
    row = (scale.astype(np.int64) * (64 * tables.SHELL_DIGITS))[..., None]
    masses = powers[row + (exponent & 63)]
    for digit in range(1, tables.SHELL_DIGITS):
        exponent >>= 6
        if not exponent.any():
            break
        masses = masses * powers[row + 64 * digit + (exponent & 63)]
        masses[masses < tables.SHELL_MIN_POWER] = 0.0  # no subnormals, as in the table
    return masses


class _Channel:
    """One side of the range coder: codes known symbols, or decodes them."""

    def __init__(self, enc: Encoder | None, dec: Decoder | None) -> None:
        self.enc, self.dec = enc, dec

    def code(self, probs: np.ndarray, symbols: np.ndarray | None) -> np.ndarray:
        if self.enc is not None:
            self.enc.categorical(symbols, probs)
            return symbols
        return self.dec.categorical(probs)


class _ShellModel:
    """The shape masses of a chunk of blocks, and the conditionals of the later steps.

    ``masses`` (n, 24, 9) are per-coordinate point masses of the values -4..4. Octad sums
    carry (even, odd) numbers of minus signs; codeword sums carry dual numbers a + eps e, a a
    product of phi(±1), e its sum over one factor replaced by phi(∓3) (the ∓3 anywhere).
    """

    def __init__(self, masses: np.ndarray) -> None:
        self.masses = masses
        n = len(masses)
        zero = masses[..., _AT]
        four = masses[..., _AT + 4] + masses[..., _AT - 4]
        self.zero, self.four = zero, four

        # pairs: sums over none, one and two coordinates at ±4 (elementary symmetric)
        none, one, pair_total = np.ones(n), np.zeros(n), np.zeros(n)
        for i in range(24):
            pair_total = pair_total * zero[:, i] + one * four[:, i]
            one = one * zero[:, i] + none * four[:, i]
            none = none * zero[:, i]

        # octads: (even, odd) per nibble pattern, then per chunk pattern, then per octad
        lay = _layout()
        z, p, m = (masses[..., c].reshape(n, 6, 4) for c in (_AT, _AT + 2, _AT - 2))
        even = np.stack([z[..., 0], p[..., 0]], -1)
        odd = np.stack([np.zeros_like(z[..., 0]), m[..., 0]], -1)
        for j in range(1, 4):
            zj, pj, mj = z[..., j, None], p[..., j, None], m[..., j, None]
            even, odd = (np.concatenate([even * zj, even * pj + odd * mj], -1),
                         np.concatenate([odd * zj, odd * pj + even * mj], -1))
        even, odd = even.reshape(n, 96), odd.reshape(n, 96)
        even_lo, even_hi = even[:, lay.chunk_low], even[:, lay.chunk_high]
        odd_lo, odd_hi = odd[:, lay.chunk_low], odd[:, lay.chunk_high]
        chunk_even = even_lo * even_hi + odd_lo * odd_hi
        chunk_odd = even_lo * odd_hi + odd_lo * even_hi
        e0, e1, e2 = (chunk_even[:, c] for c in lay.octad_chunks)
        o0, o1, o2 = (chunk_odd[:, c] for c in lay.octad_chunks)
        terms = np.zeros((n, 768))  # padded with zeros to a length sum_last halves quickly
        terms[:, :_OCTADS] = (e0 * e1 + o0 * o1) * e2 + (e0 * o1 + o0 * e1) * o2
        self.octad_terms = terms[:, :_OCTADS]

        # codewords: dual numbers per nibble pattern, per trio class, per (c0, j), per c0
        t = trio()
        a = masses[..., [_AT + 1, _AT - 1]].reshape(n, 6, 4, 2)  # phi(1), phi(-1) for c_i = 0, 1
        e = masses[..., [_AT - 3, _AT + 3]].reshape(n, 6, 4, 2)  # phi(-3), phi(3)
        nib_a, nib_e = a[:, :, 0], e[:, :, 0]
        for j in range(1, 4):
            aj0, aj1, ej0, ej1 = a[:, :, j, :1], a[:, :, j, 1:], e[:, :, j, :1], e[:, :, j, 1:]
            nib_a, nib_e = (np.concatenate([nib_a * aj0, nib_a * aj1], -1),
                            np.concatenate([nib_e * aj0 + nib_a * ej0,
                                            nib_e * aj1 + nib_a * ej1], -1))
        xa = np.take(nib_a.reshape(n, 3, 32), t.nibble_index, axis=-1)  # (n, 3, 4, 64)
        xe = np.take(nib_e.reshape(n, 3, 32), t.nibble_index, axis=-1)
        self.class_a = xa[:, :, 0::2] * xa[:, :, 1::2]  # (n, chunk, complement bit, class)
        self.class_e = xa[:, :, 0::2] * xe[:, :, 1::2] + xe[:, :, 0::2] * xa[:, :, 1::2]
        beta_a = self.class_a[:, :, 0] + self.class_a[:, :, 1]  # (n, chunk, class)
        beta_e = self.class_e[:, :, 0] + self.class_e[:, :, 1]
        self.first_a, self.first_e = beta_a[:, 0], beta_e[:, 0]
        ga = np.take(beta_a[:, 1:].reshape(n, 128), t.tail_index, axis=-1)  # (n, 2, j, c0)
        ge = np.take(beta_e[:, 1:].reshape(n, 128), t.tail_index, axis=-1)
        self.tail_a = ga[:, 0] * ga[:, 1]
        self.tail_e = ga[:, 0] * ge[:, 1] + ge[:, 0] * ga[:, 1]
        sum_a = sum_last(np.moveaxis(self.tail_a, 1, -1))
        sum_e = sum_last(np.moveaxis(self.tail_e, 1, -1))
        self.word_e = self.first_a * sum_e + self.first_e * sum_a  # (n, c0)

        self.shape_probs = normalized(
            np.stack([pair_total, sum_last(terms), sum_last(self.word_e)], -1))

    def pair_probs(self, rows: np.ndarray) -> np.ndarray:
        """(rows, 276): ±4 masses at i < j times the zero masses elsewhere, pair order."""
        zero, four = self.zero[rows], self.four[rows]
        before, after = prefix_products(zero), suffix_products(zero)
        between = np.ones((len(rows), 23))  # zero masses strictly between i and i + gap
        by_gap = []
        for gap in range(1, 24):
            i = np.arange(24 - gap)
            by_gap.append(before[:, i] * four[:, i] * between * four[:, i + gap]
                          * after[:, i + gap + 1])
            between = between[:, :-1] * zero[:, gap:23]
        return normalized(np.concatenate(by_gap, -1)[:, _layout().by_gap])

    def pair_sign_probs(self, rows: np.ndarray, pair: np.ndarray) -> np.ndarray:
        """(rows, 4): symbol 2 [x_i < 0] + [x_j < 0], as leech.shell_point orders signs."""
        lay = _layout()
        mi = self.masses[rows, lay.pair_first[pair]]
        mj = self.masses[rows, lay.pair_second[pair]]
        plus_i, minus_i = mi[:, _AT + 4], mi[:, _AT - 4]
        plus_j, minus_j = mj[:, _AT + 4], mj[:, _AT - 4]
        return normalized(np.stack([plus_i * plus_j, plus_i * minus_j,
                                 minus_i * plus_j, minus_i * minus_j], -1))

    def octad_signs(self, channel: _Channel, rows: np.ndarray, octad: np.ndarray,
                    negative: np.ndarray | None) -> np.ndarray:
        """Code the minus signs (rows, 7) of the first seven octad coordinates in turn, each
        given the parity that the coordinates after it must make up; returns them."""
        coordinates = _layout().octads[octad]
        plus = self.masses[rows[:, None], coordinates, _AT + 2]
        minus = self.masses[rows[:, None], coordinates, _AT - 2]
        n = len(rows)
        even, odd = np.ones((n, 9)), np.zeros((n, 9))  # over coordinates t.. of the octad
        for t in range(7, -1, -1):
            even[:, t] = even[:, t + 1] * plus[:, t] + odd[:, t + 1] * minus[:, t]
            odd[:, t] = odd[:, t + 1] * plus[:, t] + even[:, t + 1] * minus[:, t]
        signs = np.zeros((n, 7), np.int64)
        need = np.zeros(n, np.int64)  # parity of the minus signs still to come
        for t in range(7):
            rest_same = np.where(need == 0, even[:, t + 1], odd[:, t + 1])
            rest_flip = np.where(need == 0, odd[:, t + 1], even[:, t + 1])
            probs = normalized(np.stack([plus[:, t] * rest_same, minus[:, t] * rest_flip], -1))
            signs[:, t] = channel.code(probs, None if negative is None else negative[:, t])
            need ^= signs[:, t]
        return signs

    def trio_probs(self, rows: np.ndarray, c0: np.ndarray, j: np.ndarray | None = None
                   ) -> np.ndarray:
        """(rows, 8): partner j given class c0, or complement bits s given (c0, j)."""
        t = trio()
        if j is None:
            tail_a, tail_e = self.tail_a[rows, :, c0], self.tail_e[rows, :, c0]
            first_a, first_e = self.first_a[rows, c0, None], self.first_e[rows, c0, None]
            return normalized(first_a * tail_e + first_e * tail_a)
        s = np.arange(8)
        prod_a, prod_e = None, None
        for k, cls in enumerate((c0, t.second[c0, j], t.third[c0, j])):
            at = (rows[:, None], k, (s >> k) & 1, cls[:, None])
            ka, ke = self.class_a[at], self.class_e[at]
            if prod_a is None:
                prod_a, prod_e = ka, ke
            else:
                prod_a, prod_e = prod_a * ka, prod_a * ke + prod_e * ka
        return normalized(prod_e)

    def position_probs(self, rows: np.ndarray, word: np.ndarray) -> np.ndarray:
        """(rows, 24): where the ∓3 sits, given the codeword row."""
        bits = _layout().code[word]
        masses = self.masses[rows]
        ones = np.where(bits, masses[..., _AT - 1], masses[..., _AT + 1])
        threes = np.where(bits, masses[..., _AT + 3], masses[..., _AT - 3])
        return normalized(prefix_products(ones)[:, :24] * threes * suffix_products(ones)[:, 1:])


def _symbols(index: np.ndarray) -> dict[str, np.ndarray]:
    """The symbol of every step for known shell indices (junk where the shape differs)."""
    octad, odd = index - _N_PAIR, index - _ODD_START
    position = trio().position[np.clip(odd // 24, 0, 4095)]
    return {"shape": np.searchsorted([_N_PAIR, _ODD_START], index, side="right"),
            "pair": index >> 2, "pair_signs": index & 3,
            "octad": octad >> 7, "octad_signs": (octad[:, None] >> np.arange(7)) & 1,
            "c0": position >> 6, "j": (position >> 3) & 7, "s": position & 7, "at": odd % 24}


def _code_chunk(channel: _Channel, model: _ShellModel,
                symbols: dict[str, np.ndarray] | None) -> np.ndarray:
    """Code the symbols of one chunk, or decode them (``symbols`` None): the one definition
    of the order of the steps. Returns the shell indices."""

    def known(name: str, rows: np.ndarray) -> np.ndarray | None:
        return None if symbols is None else symbols[name][rows]

    everything = np.arange(len(model.masses))
    shape = channel.code(model.shape_probs, known("shape", everything))
    index = np.zeros(len(everything), np.int64)

    rows = np.flatnonzero(shape == 0)
    pair = channel.code(model.pair_probs(rows), known("pair", rows))
    signs = channel.code(model.pair_sign_probs(rows, pair), known("pair_signs", rows))
    index[rows] = 4 * pair + signs

    rows = np.flatnonzero(shape == 1)
    octad = channel.code(normalized(model.octad_terms[rows]), known("octad", rows))
    signs = model.octad_signs(channel, rows, octad, known("octad_signs", rows))
    index[rows] = _N_PAIR + 128 * octad + (signs << np.arange(7)).sum(-1)

    rows = np.flatnonzero(shape == 2)
    c0 = channel.code(normalized(model.word_e[rows]), known("c0", rows))
    j = channel.code(model.trio_probs(rows, c0), known("j", rows))
    word = trio().word[c0, j, channel.code(model.trio_probs(rows, c0, j), known("s", rows))]
    at = channel.code(model.position_probs(rows, word), known("at", rows))
    index[rows] = _ODD_START + 24 * word + at
    return index


class ShellCoder:
    """Exact coding of first-shell points given quantized scales and means.

    The arguments are those of ``LeechCoder``: ``scale`` (n, 24) indexes
    ``tables.THETA_SCALES`` and ``mean_q`` (n, 24) is the mean in units of 1 / MEAN_GRID.
    Points that are not minimal vectors of Λ24 raise ``ValueError``.
    """

    chunk = 256  # blocks per model evaluation, small enough to stay in cache

    def encode(self, enc: Encoder, points: np.ndarray, scale: np.ndarray,
               mean_q: np.ndarray) -> None:
        if not len(points):
            return
        index = leech.shell_index(torch.from_numpy(np.asarray(points, np.int64))).numpy()
        channel = _Channel(enc, None)
        for lo in range(0, len(index), self.chunk):
            sl = slice(lo, lo + self.chunk)
            model = _ShellModel(point_masses(scale[sl], mean_q[sl]))
            _code_chunk(channel, model, _symbols(index[sl]))

    def decode(self, dec: Decoder, scale: np.ndarray, mean_q: np.ndarray) -> np.ndarray:
        channel = _Channel(None, dec)
        index = np.zeros(len(scale), np.int64)
        for lo in range(0, len(scale), self.chunk):
            sl = slice(lo, lo + self.chunk)
            index[sl] = _code_chunk(channel, _ShellModel(point_masses(scale[sl], mean_q[sl])),
                                    None)
        return leech.shell_point(torch.from_numpy(index)).numpy().reshape(-1, 24)
