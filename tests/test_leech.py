"""Leech lattice: Golay code, first shell, membership, exact decoders against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsq.codec import leech

SCALES = (0.1, 0.3, 1.0, 2.0, 4.0, 10.0, 30.0, 100.0)


def _sq_dist(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return ((y.double() - x.double()) ** 2).sum(-1)


def _shell() -> torch.Tensor:
    return torch.tensor(leech.first_shell(), dtype=torch.int64)


def _random_lattice_points(n: int, gen: torch.Generator) -> torch.Tensor:
    """Sums of a few random minimal vectors: lattice points far from the origin too."""
    shell = _shell()
    picks = torch.randint(0, leech.SHELL_SIZE, (n, 6), generator=gen)
    return shell[picks].sum(1)


@pytest.fixture(scope="module")
def hard_points() -> torch.Tensor:
    """Random points over many scales plus ties and near-ties between lattice neighbours.

    Values are float32-representable, so one exhaustive reference serves both dtypes.
    """
    gen = torch.Generator().manual_seed(1234)
    parts = [torch.randn(160, 24, generator=gen) * s for s in SCALES]
    parts.append((torch.rand(200, 24, generator=gen) - 0.5) * 16)
    base = _random_lattice_points(200, gen)
    step = _shell()[torch.randint(0, leech.SHELL_SIZE, (200,), generator=gen)]
    midpoints = (base + step / 2).float()
    noise = torch.randn(200, 24, generator=gen)
    parts += [midpoints, midpoints + 1e-5 * noise, midpoints + 1e-3 * noise]
    return torch.cat(parts).double()


@pytest.fixture(scope="module")
def reference(hard_points: torch.Tensor) -> torch.Tensor:
    return leech.nearest_reference(hard_points)


def test_golay_code_structure() -> None:
    code = leech.golay_code()
    assert code.shape == (4096, 24)
    weights = np.bincount(code.sum(1).astype(np.int64), minlength=25)
    assert weights[[0, 8, 12, 16, 24]].tolist() == [1, 759, 2576, 759, 1]
    assert weights.sum() == 4096 and len({row.tobytes() for row in code}) == 4096
    gen = leech.golay_generator()
    for k in (1, 5, 2048, 4095):
        bits = [(k >> j) & 1 for j in range(12)]
        assert (code[k] == (np.array(bits) @ gen.astype(np.int64)) % 2).all()
    info_bits = (np.arange(4096)[:, None] >> np.arange(12)) & 1
    assert (code[:, list(leech.GOLAY_INFO_POSITIONS)] == info_bits).all()
    assert (leech.golay_index(torch.tensor(code)) == torch.arange(4096)).all()
    assert ((code.astype(np.int64) @ code.T.astype(np.int64)) % 2 == 0).all()  # self-dual
    with pytest.raises(ValueError):
        leech.golay_index(torch.eye(24, dtype=torch.int64)[:1])


def test_hexacode_minimum_distance() -> None:
    hexa = leech.hexacode()
    assert hexa.shape == (64, 6) and len({tuple(w) for w in hexa}) == 64
    assert ((hexa[1:] != 0).sum(1) >= 4).all()


def test_first_shell() -> None:
    shell = leech.first_shell().astype(np.int64)
    assert shell.shape == (leech.SHELL_SIZE, 24)
    assert ((shell**2).sum(1) == leech.MIN_NORM).all()
    assert len({row.tobytes() for row in shell}) == leech.SHELL_SIZE
    peak = np.abs(shell).max(1)
    assert [(peak == 4).sum(), (peak == 2).sum(), (peak == 3).sum()] == [1104, 97152, 98304]
    assert leech.is_leech(shell).all()


def test_shell_bijection() -> None:
    shell = _shell()
    index = torch.arange(leech.SHELL_SIZE)
    assert (leech.shell_index(shell) == index).all()
    assert (leech.shell_point(index) == shell).all()
    assert leech.shell_point(index[:6].view(2, 3)).shape == (2, 3, 24)
    for bad in (torch.tensor([-1]), torch.tensor([leech.SHELL_SIZE])):
        with pytest.raises(ValueError):
            leech.shell_point(bad)
    not_shell = [2 * shell[:1], shell[:1] + shell[1:2], torch.zeros(1, 24, dtype=torch.int64)]
    octad_like = torch.zeros(1, 24, dtype=torch.int64)
    octad_like[0, [0, 1, 2, 3, 4, 5, 6, 8]] = 2  # not an octad
    assert not leech.is_leech(octad_like).item()
    for bad in [*not_shell, octad_like]:
        with pytest.raises(ValueError):
            leech.shell_index(bad)


def test_is_leech_membership() -> None:
    gen = torch.Generator().manual_seed(7)
    points = _random_lattice_points(2000, gen)
    assert leech.is_leech(points).all()
    assert leech.is_leech(points.numpy()).all()
    assert leech.is_leech(points.double()).all()
    coord = torch.randint(0, 24, (2000,), generator=gen)
    for delta in (1, 2, 4, -4, 3):
        moved = points.clone()
        moved[torch.arange(2000), coord] += delta
        assert not leech.is_leech(moved).any()
    assert leech.is_leech(8 * torch.eye(24, dtype=torch.int64)).all()
    assert not leech.is_leech(points.double() + 0.5).any()
    with pytest.raises(ValueError):
        leech.is_leech(torch.zeros(3, 23))


def test_coset_decomposition() -> None:
    gen = torch.Generator().manual_seed(3)
    points = _random_lattice_points(1000, gen)
    m, index = leech.coset_of(points)
    residues = leech.coset_residues(m, index)
    assert ((points - residues) % 4 == 0).all()
    q = (points - residues) // 4
    assert ((q.sum(-1) - m) % 2 == 0).all()
    with pytest.raises(ValueError):
        leech.coset_of(points + 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nearest_matches_exhaustive_search(
    hard_points: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype
) -> None:
    y = hard_points.to(dtype)
    got = leech.nearest(y)
    assert got.dtype == torch.int64 and got.shape == y.shape
    assert leech.is_leech(got).all()
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    gap = _sq_dist(hard_points, got) - _sq_dist(hard_points, reference)
    assert gap.max().item() <= tol
    assert (got == reference).all(-1).float().mean() > 0.9  # only ties may differ


def test_compiled_nearest_gives_the_same_points(hard_points: torch.Tensor) -> None:
    """Inductor-compiled decoding over padded fixed-size chunks: the points of the eager
    decoder for a batch of two chunks (the second padded), any leading shape, and none."""
    nearest = leech.compiled_nearest("inductor")
    y = torch.cat([hard_points, torch.randn(5000, 24, generator=torch.Generator().manual_seed(1))
                   * 4]).to(torch.float32)
    assert torch.equal(nearest(y), leech.nearest(y))
    assert torch.equal(nearest(y[:60].view(3, 20, 24)), leech.nearest(y[:60]).view(3, 20, 24))
    assert nearest(torch.zeros(0, 24)).shape == (0, 24)
    with pytest.raises(ValueError):
        nearest(torch.full((2, 24), float("nan")))


def test_reference_is_locally_optimal(hard_points: torch.Tensor, reference: torch.Tensor) -> None:
    """No minimal vector moves the exhaustive answer closer (independent of the coset code)."""
    shell = _shell().double()
    y, x = hard_points[::100], reference[::100].double()
    err = y - x
    moved = (err**2).sum(-1, keepdim=True) - 2 * err @ shell.T + (shell**2).sum(-1)
    assert (moved >= (err**2).sum(-1, keepdim=True) - 1e-9).all()


def test_nearest_shapes_and_errors() -> None:
    assert leech.nearest(torch.zeros(0, 24)).shape == (0, 24)
    assert leech.nearest(torch.zeros(2, 0, 24, dtype=torch.float64)).shape == (2, 0, 24)
    y = torch.randn(2, 3, 24, generator=torch.Generator().manual_seed(0)) * 5
    got = leech.nearest(y)
    assert got.shape == (2, 3, 24) and (got.view(6, 24) == leech.nearest(y.view(6, 24))).all()
    assert (leech.nearest(torch.zeros(1, 24)) == 0).all()
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = torch.zeros(4, 24)
        y[2, 5] = bad
        with pytest.raises(ValueError):
            leech.nearest(y)
        with pytest.raises(ValueError):
            leech.nearest_shell(y)
    with pytest.raises(ValueError):
        leech.nearest(torch.zeros(3, 12))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nearest_shell_matches_brute_force(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(11)
    shell = _shell().double()
    sparse = torch.randn(100, 24, generator=gen) * (torch.rand(100, 24, generator=gen) < 0.15)
    u = torch.cat(
        [
            torch.randn(300, 24, generator=gen),
            sparse,
            shell[torch.randint(0, leech.SHELL_SIZE, (60,), generator=gen)].float(),
            torch.sign(torch.randn(40, 24, generator=gen)),
        ]
    ).to(dtype)
    index, point = leech.nearest_shell(u)
    assert index.shape == (500,) and point.shape == (500, 24)
    assert (leech.shell_point(index) == point).all()
    best = (u.double() @ shell.T).amax(-1)
    got = (u.double() * point.double()).sum(-1)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    assert ((best - got) <= tol * best.abs().clamp(min=1)).all()
    assert torch.equal(index, leech.nearest_shell_reference(u))  # ties too


def test_nearest_shell_zero_and_empty() -> None:
    index, point = leech.nearest_shell(torch.zeros(3, 24))
    assert (index == index[0]).all() and leech.is_leech(point).all()
    assert (point.pow(2).sum(-1) == 32).all()
    index, point = leech.nearest_shell(torch.zeros(0, 24))
    assert index.shape == (0,) and point.shape == (0, 24)


@pytest.fixture(scope="module")
def shell_directions() -> tuple[torch.Tensor, torch.Tensor]:
    """Directions with and without ties, float32-representable, and their brute-force index.

    Integer and few-valued rows tie many shell points (equal magnitudes inside an octad decide
    which sign flips, zero coordinates make both signs equal); the rest are the training's
    directions y / |y| sqrt(32) over many scales.
    """
    gen = torch.Generator().manual_seed(21)
    shell = _shell().float()
    gauss = torch.randn(1200, 24, generator=gen)
    train = gauss / gauss.norm(dim=-1, keepdim=True) * 32**0.5
    scales = torch.tensor([1e-20, 1e-3, 1.0, 1e3, 1e20]).repeat_interleave(40)[:, None]
    few = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])[torch.randint(0, 5, (600, 24), generator=gen)]
    points = shell[torch.randint(0, leech.SHELL_SIZE, (200,), generator=gen)]
    u = torch.cat(
        [
            train[:1000],
            gauss[1000:] * scales,
            torch.randint(-3, 4, (600, 24), generator=gen).float(),
            few,
            few[:200] * (torch.rand(200, 24, generator=gen) < 0.3),
            points,
            points + torch.randint(-1, 2, (200, 24), generator=gen),
            torch.sign(torch.randn(100, 24, generator=gen)),
        ]
    )
    return u, leech.nearest_shell_reference(u)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nearest_shell_ties_match_brute_force(
    shell_directions: tuple[torch.Tensor, torch.Tensor], dtype: torch.dtype
) -> None:
    u, ref = shell_directions
    index, point = leech.nearest_shell(u.to(dtype))
    assert torch.equal(index, ref)
    assert torch.equal(point, leech.shell_point(ref))
    index, _ = leech.nearest_shell(u[:300].to(dtype).view(3, 100, 24))
    assert torch.equal(index, ref[:300].view(3, 100))


def test_compiled_nearest_shell(shell_directions: tuple[torch.Tensor, torch.Tensor]) -> None:
    """One fixed-shape graph (no breaks) for search and points, padded chunks, the same
    indices as brute force and the same points as shell_point."""
    u, ref = shell_directions
    explained = torch._dynamo.explain(leech._shell_chunk)(u[:64])
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    search = leech.compiled_nearest_shell("aot_eager")
    index, point = search(u[:1000])  # not a multiple of the chunk: the last chunk is padded
    assert torch.equal(index, ref[:1000]) and torch.equal(point, leech.shell_point(ref[:1000]))
    index, point = search(u[1000:].double().view(-1, 100, 24))
    assert torch.equal(index, ref[1000:].view(-1, 100))
    assert torch.equal(point, leech.shell_point(index))
    assert search(torch.zeros(0, 24))[0].shape == (0,)
    with pytest.raises(ValueError):
        search(torch.full((2, 24), float("nan")))
