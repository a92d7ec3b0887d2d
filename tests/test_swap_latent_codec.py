"""tools/swap_latent_codec: a shipped model's latents through its own and another codec."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lsq.models import registry
from lsq.models.latent_codecs import ScalarLatentCodec
from lsq.tools import swap_latent_codec as swap


@pytest.fixture(scope="module", autouse=True)
def repository_weights():
    """The repository's weights folder: `scalar` is not in the wheel."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(registry.WEIGHTS_ENV,
                     str(Path(__file__).resolve().parents[1] / "models" / "weights"))
        yield


@pytest.fixture(scope="module")
def scalar_model():
    return swap.load_trainable("scalar")


def noise(seed: int) -> torch.Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_the_own_codec_swapped_in_gives_the_same_figures(scalar_model):
    image = [noise(0)]
    own = swap.rate_and_psnr(scalar_model, image, 3.0)
    assert swap.rate_and_psnr(swap.swapped_model(scalar_model, "scalar"), image, 3.0) == own
    bpp, db = swap.rate_and_psnr(swap.swapped_model(scalar_model, "leech"), image, 3.0)
    assert (bpp, db) != own and bpp > 0 and 10 < db < 60
    assert isinstance(scalar_model.latent_codec, ScalarLatentCodec)
    assert swap.rate_and_psnr(scalar_model, image, 3.0) == own  # the model itself untouched


def test_a_codec_reading_other_hyper_parameters_is_refused(scalar_model):
    with pytest.raises(ValueError, match="reads other hyper parameters"):
        swap.swapped_model(scalar_model, "spherical-leech")


def test_unknown_names_exit_with_a_message():
    with pytest.raises(SystemExit, match="is not shipped"):
        swap.main(["--model", "no-such-model", "--codec", "leech"])
    with pytest.raises(SystemExit, match="no-such-codec"):
        swap.main(["--model", "scalar", "--codec", "no-such-codec"])


def half_flat(seed: int) -> list[torch.Tensor]:
    """Half flat grey (small predicted scales), half noise (large ones)."""
    x = noise(seed)
    return [torch.cat([torch.full_like(x[..., :32], 0.5), x[..., 32:]], -1)]


@pytest.mark.parametrize("name", ["scalar", "scalar-cgf"])
def test_leech_hybrid_takes_the_lattice_above_its_scale_threshold(name):
    net, image = swap.load_trainable(name), half_flat(1)

    def measured(codec: str, **options) -> tuple[float, float]:
        return swap.rate_and_psnr(swap.swapped_model(net, codec, **options), image, 6.0)

    own = swap.rate_and_psnr(net, image, 6.0)
    assert measured("leech-hybrid", above=1e30) == own
    assert measured("leech-hybrid", above=-1e30) == measured("leech")
    assert measured("leech-hybrid", above=0.5) not in (own, measured("leech"))

    def share(above: float) -> tuple[float, float]:
        hybrid = swap.swapped_model(net, "leech-hybrid", above=above)
        with swap.lattice_share(hybrid) as shares:
            swap.rate_and_psnr(hybrid, image, 6.0)
        return shares()

    assert share(1e30) == (0.0, 0.0) and share(-1e30) == (1.0, 1.0)
    blocks, bits = share(0.5)
    assert 0 < blocks < 1 and 0 < bits < 1


def test_a_channel_groups_model_swaps_the_codec_of_every_group():
    hybrid = swap.swapped_model(swap.load_trainable("scalar-cgf"), "leech-hybrid")
    groups = hybrid.latent_codec.groups
    assert len(swap.hybrid_codecs(hybrid)) == len(groups) > 1


def test_above_is_refused_for_other_codecs():
    with pytest.raises(SystemExit, match="leech-hybrid only"):
        swap.main(["--model", "scalar", "--codec", "leech", "--above", "1"])
