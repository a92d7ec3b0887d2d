"""tools/swap_latent_codec: a shipped model's latents through its own and another codec."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lsq.models import registry
from lsq.models.latent_codecs import ScalarLatentCodec, make_latent_codec
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


def test_the_own_codec_swapped_in_gives_the_same_figures_and_is_put_back(scalar_model):
    image = [torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))]
    own = swap.rate_and_psnr(scalar_model, scalar_model.latent_codec, image, 3.0)
    fresh = make_latent_codec("scalar", scalar_model.M).eval()
    assert swap.rate_and_psnr(scalar_model, fresh, image, 3.0) == own
    leech = swap.swapped_codec(scalar_model, "leech")
    bpp, db = swap.rate_and_psnr(scalar_model, leech, image, 3.0)
    assert (bpp, db) != own and bpp > 0 and 10 < db < 60
    assert isinstance(scalar_model.latent_codec, ScalarLatentCodec)


def test_a_codec_reading_other_hyper_parameters_is_refused(scalar_model):
    with pytest.raises(ValueError, match="reads other hyper parameters"):
        swap.swapped_codec(scalar_model, "bsq")


def test_unknown_names_exit_with_a_message():
    with pytest.raises(SystemExit, match="is not shipped"):
        swap.main(["--model", "no-such-model", "--codec", "leech"])
    with pytest.raises(SystemExit, match="unknown quantizer"):
        swap.main(["--model", "scalar", "--codec", "no-such-codec"])


def test_leech_hybrid_takes_the_lattice_above_its_scale_threshold(scalar_model):
    noise = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    image = [torch.cat([torch.full_like(noise[..., :32], 0.5), noise[..., 32:]], -1)]

    def measured(codec: str, **options) -> tuple[float, float]:
        return swap.rate_and_psnr(scalar_model, swap.swapped_codec(scalar_model, codec,
                                                                   **options), image, 6.0)

    own = swap.rate_and_psnr(scalar_model, scalar_model.latent_codec, image, 6.0)
    everywhere = measured("leech")
    assert measured("leech-hybrid", above=math.inf) == own
    assert measured("leech-hybrid", above=-math.inf) == everywhere
    assert measured("leech-hybrid", above=0.5) not in (own, everywhere)

    def share(above: float) -> tuple[float, float]:
        hybrid = swap.swapped_codec(scalar_model, "leech-hybrid", above=above)
        with swap.lattice_share(hybrid) as shares:
            swap.rate_and_psnr(scalar_model, hybrid, image, 6.0)
        return shares()

    assert share(math.inf) == (0.0, 0.0) and share(-math.inf) == (1.0, 1.0)
    blocks, bits = share(0.5)
    assert 0 < blocks < 1 and 0 < bits < 1
    assert isinstance(scalar_model.latent_codec, ScalarLatentCodec)


def test_above_is_refused_for_other_codecs():
    with pytest.raises(SystemExit, match="leech-hybrid only"):
        swap.main(["--model", "scalar", "--codec", "leech", "--above", "1"])
