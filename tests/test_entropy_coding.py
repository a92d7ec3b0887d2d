"""Exact range coding: round trips over wide parameter ranges, size against the model."""

import math

import numpy as np
import pytest
import torch

from lsq.codec import leech, tables
from lsq.codec.entropy_coding import (
    Decoder,
    Encoder,
    LeechCoder,
    normalized,
    scale_index,
    trio,
)
from lsq.codec.lattice_prior import leech_log_prob


def _random_blocks(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lattice points drawn near random means, with scales 0.01 .. 1000 (integer frame)."""
    rng = np.random.default_rng(seed)
    sigma = np.exp(rng.uniform(math.log(0.01), math.log(1000), (n, 1))) * np.ones((1, 24))
    mean = rng.normal(0, 200, (n, 24)) * rng.integers(0, 2, (n, 1))
    y = mean + sigma * rng.normal(size=(n, 24))
    y[:5] += 5000  # far tails: escapes
    points = leech.nearest(torch.from_numpy(y)).numpy()
    scale = scale_index(sigma, tables.theta_tables())
    mean_q = np.floor(mean * tables.MEAN_GRID + 0.5).astype(np.int64)
    return points, scale, mean_q


def test_trio_factorizes_the_golay_code() -> None:
    """Every codeword is (class c0, partner j, complement bits s), once each, with the
    partner classes depending on (c0, j) only: the structure the coset sums rely on."""
    t = trio()
    code = leech.golay_code().astype(np.int64)
    assert sorted(t.word.reshape(-1)) == list(range(4096))
    c0, j, s = np.meshgrid(np.arange(64), np.arange(8), np.arange(8), indexing="ij")
    for k, cls in enumerate((c0, t.second[c0, j], t.third[c0, j])):
        flip = (s >> k) & 1
        expected = t.rep[cls] ^ (255 * flip)
        got = code[t.word, 8 * k : 8 * k + 8] @ (1 << np.arange(8))
        assert np.array_equal(got, expected)
    assert np.array_equal(t.position[t.word], np.arange(4096).reshape(64, 8, 8))


@pytest.mark.parametrize(("n", "group", "chunk"), [(1500, None, None), (1500, 500, 64),
                                                  (0, None, None)])
def test_leech_points_round_trip_exactly(n: int, group: int | None, chunk: int | None) -> None:
    points, scale, mean_q = _random_blocks(n, seed=3)
    coder = LeechCoder()
    coder.group = group or coder.group
    coder.chunk = chunk or coder.chunk
    enc = Encoder()
    coder.encode(enc, points, scale, mean_q)
    decoded = coder.decode(Decoder(enc.finish()), scale, mean_q)
    assert decoded.shape == (n, 24)
    assert np.array_equal(decoded, points)


def test_coded_size_matches_the_exact_model_within_one_percent() -> None:
    rng = np.random.default_rng(5)
    n = 10_000
    sigma = np.exp(rng.uniform(math.log(0.3), math.log(30), (n, 24)))
    mean = rng.normal(0, 10, (n, 24))
    scale = scale_index(sigma, tables.theta_tables())
    mean_q = np.floor(mean * tables.MEAN_GRID + 0.5).astype(np.int64)
    mu_q, sigma_q = mean_q / tables.MEAN_GRID, tables.THETA_SCALES[scale]
    points = leech.nearest(torch.from_numpy(mu_q + sigma_q * rng.normal(size=(n, 24)))).numpy()
    enc = Encoder()
    LeechCoder().encode(enc, points, scale, mean_q)
    size = len(enc.finish())
    ideal = -leech_log_prob(torch.from_numpy(points).double(), torch.from_numpy(mu_q),
                            torch.from_numpy(sigma_q)).sum().item() / math.log(2) / 8
    assert abs(size - ideal) < 0.01 * ideal + 8


@pytest.mark.parametrize("seed", [0, 1])
def test_table_offsets_round_trip_with_escapes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gauss = tables.gauss_tables()
    sigma = np.exp(rng.uniform(math.log(0.01), math.log(1000), 4000))
    values = np.round(sigma * rng.normal(size=4000)).astype(np.int64)
    values[:10] = rng.integers(-(2**31) + 1, 2**31 - 1, 10)
    rows = scale_index(sigma, gauss)
    enc = Encoder()
    enc.table_offsets(values, rows, gauss)
    assert np.array_equal(Decoder(enc.finish()).table_offsets(rows, gauss), values)


def test_categorical_round_trip_and_bad_length() -> None:
    rng = np.random.default_rng(2)
    probs = rng.random((500, 2))
    probs[:50, 1] = 0.0  # zero-probability symbols stay codable
    bits = rng.integers(0, 2, 500)
    enc = Encoder()
    enc.categorical(bits, probs)
    assert np.array_equal(Decoder(enc.finish()).categorical(probs), bits)
    with pytest.raises(ValueError):
        Decoder(b"abc")


def test_rows_of_tiny_or_zero_total_stay_codable() -> None:
    # constriction panics on a row of total 1e-306 and refuses a subnormal one
    masses = np.array([[5e-307, 5e-307], [1e-320, 3e-320], [0.0, 0.0], [-1e-17, 2.0]])
    probs = normalized(masses)
    assert probs.tolist() == [[1.0, 1.0], [1 / 3, 1.0], [1.0, 1.0], [0.0, 1.0]]
    symbols = np.array([1, 0, 1, 1])
    enc = Encoder()
    enc.categorical(symbols, probs)
    assert np.array_equal(Decoder(enc.finish()).categorical(probs), symbols)
