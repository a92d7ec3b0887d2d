"""Probability tables for coding, built once and shipped as ``coding_tables.npz``.

The coder never evaluates a transcendental function: every probability it hands to
constriction comes from these tables through fixed-order float64 arithmetic, so encoder
and decoder derive bit-identical models on any machine. Rebuild with
``python -m lsq.codec.tables`` (deterministic, but the shipped file is the reference).

Three families, indexed by a quantized scale (``scale_index``) and, for the lattice,
a quantized mean (``MEAN_GRID`` steps per integer-frame unit):
- ``gauss``: unit-bin Gaussian N(0, sigma) over integer offsets (scalar symbols, gains);
- ``theta``: for class k + 8Z of a lattice coordinate, the masses phi(8 d - phase / K)
  over the offset d, and their sum C (the theta function of ``lattice_prior``);
- ``shell_powers``: q^(v 64^d) with q = exp(-1 / (2 K^2 sigma^2)), from which the first-shell
  coder assembles a coordinate's mass ratios phi(k) / phi(k') = q^E (E an integer) for
  any mean, however far.
The first two cover |d| <= width and reserve one final escape symbol for the tails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

TABLE_FILE = Path(__file__).with_name("coding_tables.npz")
PHASE_BITS = 5
PHASES = 1 << PHASE_BITS  # phases of a mean against the period 8 of a lattice class
MEAN_GRID = PHASES // 8  # lattice means are rounded to 1/4 of an integer-frame unit
GAUSS_SCALES = np.geomspace(0.11, 256.0, 64)
THETA_SCALES = np.geomspace(0.25, 512.0, 64)
TAIL_SIGMAS = 8.0
BSQ_LOGIT_STEP = 0.125
BSQ_LOGITS = 128  # logit indices -BSQ_LOGITS..BSQ_LOGITS
MIN_MASS = 1e-12
SHELL_DIGITS = 6  # base-64 digits of the shell exponents: E < 64**6 (larger E give 0)
SHELL_MIN_POWER = 1e-300  # smaller powers are stored as 0: no subnormals reach the coder


@dataclass(frozen=True)
class Tables:
    """Flat probability rows: row t covers values low[t] .. low[t] + length[t] - 2, then escape."""

    probs: np.ndarray  # float64, concatenated rows (each sums to 1, escape included)
    start: np.ndarray  # int64 position of row t in ``probs``
    length: np.ndarray  # int64 symbols in row t, escape included
    low: np.ndarray  # int64 value of symbol 0 of row t
    bounds: np.ndarray | None = None  # scale boundaries: index = searchsorted(bounds, sigma)

    def row(self, t: int) -> np.ndarray:
        return self.probs[self.start[t] : self.start[t] + self.length[t]]


def _rows(masses: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalize mass rows, append the escape (the mass left outside, floored), flatten."""
    rows, start, width, pos = [], [], [], 0
    for m in masses:
        m = np.maximum(m, MIN_MASS)
        escape = max(1.0 - m.sum(), MIN_MASS)
        row = np.append(m, escape)
        rows.append(row / row.sum())
        start.append(pos)
        width.append((len(m) - 1) // 2)
        pos += len(row)
    return np.concatenate(rows), np.array(start, np.int64), np.array(width, np.int64)


def _bounds(scales: np.ndarray) -> np.ndarray:
    return np.sqrt(scales[:-1] * scales[1:])


def build() -> dict[str, np.ndarray]:
    """Compute all tables from their formulas (used to write the shipped file)."""
    gauss = []
    for sigma in GAUSS_SCALES:
        w = int(math.ceil(TAIL_SIGMAS * sigma)) + 1
        d = np.arange(-w, w + 1, dtype=np.float64)
        upper = np.array([math.erfc(-(v + 0.5) / (sigma * math.sqrt(2))) for v in d]) / 2
        lower = np.array([math.erfc(-(v - 0.5) / (sigma * math.sqrt(2))) for v in d]) / 2
        gauss.append(upper - lower)
    theta, theta_sum = [], []
    for sigma in THETA_SCALES:
        w = int(math.ceil(TAIL_SIGMAS * sigma / 8)) + 1
        d = np.arange(-w, w + 1, dtype=np.float64)
        for phase in range(PHASES):
            t = 8 * d - phase / MEAN_GRID
            phi = np.exp(-(t * t) / (2 * sigma * sigma))
            theta_sum.append(phi.sum())
            theta.append(phi / phi.sum() * (1 - 1e-9))
    digits = np.arange(64.0)[None, :] * 64.0 ** np.arange(SHELL_DIGITS)[:, None]
    shell = np.exp(-digits[None] / (2 * MEAN_GRID**2 * THETA_SCALES[:, None, None] ** 2))
    shell[shell < SHELL_MIN_POWER] = 0.0
    g_probs, g_start, g_width = _rows(gauss)
    t_probs, t_start, t_width = _rows(theta)
    return {
        "gauss_probs": g_probs, "gauss_start": g_start, "gauss_width": g_width,
        "gauss_bounds": _bounds(GAUSS_SCALES),
        "theta_probs": t_probs, "theta_start": t_start, "theta_width": t_width,
        "theta_bounds": _bounds(THETA_SCALES),
        "theta_sum": np.array(theta_sum, np.float64),
        "bsq_probs": np.array([1 / (1 + math.exp(-i * BSQ_LOGIT_STEP))
                               for i in range(-BSQ_LOGITS, BSQ_LOGITS + 1)]),
        "shell_powers": shell,
    }


@lru_cache(maxsize=1)
def load() -> dict[str, np.ndarray]:
    with np.load(TABLE_FILE) as f:
        return {k: f[k] for k in f.files}


def _symmetric(kind: str) -> Tables:
    t = load()
    width = t[f"{kind}_width"]
    return Tables(t[f"{kind}_probs"], t[f"{kind}_start"], 2 * width + 2, -width,
                  t[f"{kind}_bounds"])


@lru_cache(maxsize=1)
def gauss_tables() -> Tables:
    return _symmetric("gauss")


@lru_cache(maxsize=1)
def theta_tables() -> Tables:
    """Rows indexed by scale_index * PHASES + phase."""
    return _symmetric("theta")


def bsq_probs() -> np.ndarray:
    """P(bit = 1) for logit index i, logit = (i - BSQ_LOGITS) * BSQ_LOGIT_STEP."""
    return load()["bsq_probs"]


def theta_sum() -> np.ndarray:
    """C(scale, phase) = sum_d phi(8 d - phase / K), shape (scales, PHASES)."""
    return load()["theta_sum"].reshape(len(THETA_SCALES), PHASES)


def shell_powers() -> np.ndarray:
    """q(scale)^(v 64^d), q = exp(-1 / (2 K^2 sigma^2)): shape (scales, SHELL_DIGITS, 64).

    With K = MEAN_GRID and the mean m in units of 1 / K, phi(k) = q^((K k - m)^2), so a ratio
    of two point masses is q^E for an integer E: one entry per base-64 digit of E, multiplied.
    """
    return load()["shell_powers"]


if __name__ == "__main__":
    import io

    from lsq.fileio import write_atomic

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **build())
    write_atomic(TABLE_FILE, buffer.getbuffer())
