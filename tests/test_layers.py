"""lsq.models.layers against the CompressAI layers it replaces: same keys, same bits."""

from __future__ import annotations

import pytest
import torch
from compressai.layers import GDN as CompressaiGDN
from compressai.models.utils import conv as compressai_conv
from compressai.models.utils import deconv as compressai_deconv

from lsq.models import layers


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("channels", [1, 8])
def test_gdn_matches_compressai(inverse: bool, channels: int) -> None:
    ours, theirs = layers.GDN(channels, inverse=inverse), CompressaiGDN(channels, inverse=inverse)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
        assert ours.state_dict()[key].dtype == value.dtype, key
    gen = torch.Generator().manual_seed(channels + 10 * inverse)
    state = {k: torch.randn(v.shape, generator=gen) if k in ("beta", "gamma") else v
             for k, v in theirs.state_dict().items()}  # negative entries exercise the bounds
    ours.load_state_dict(state)
    theirs.load_state_dict(state)
    x = torch.randn(2, channels, 7, 5, generator=gen, dtype=torch.float32)
    for dtype in (torch.float32, torch.float64):
        xo = x.to(dtype).clone().requires_grad_()
        xt = x.to(dtype).clone().requires_grad_()
        yo, yt = ours.to(dtype)(xo), theirs.to(dtype)(xt)
        assert torch.equal(yo, yt)
        with torch.inference_mode():  # the in-place coding path: the same values
            xi = x.to(dtype)
            assert torch.equal(ours(xi), yt)
            assert torch.equal(xi, x.to(dtype))
        yo.square().sum().backward()
        yt.square().sum().backward()
        assert torch.equal(xo.grad, xt.grad)
        for (name, po), pt in zip(ours.named_parameters(), theirs.parameters(), strict=True):
            assert torch.equal(po.grad, pt.grad), name
        ours.zero_grad()
        theirs.zero_grad()


@pytest.mark.parametrize("kernel_size, stride", [(5, 2), (3, 1), (3, 2)])
def test_conv_and_deconv_match_compressai(kernel_size: int, stride: int) -> None:
    x = torch.randn(1, 4, 16, 12, generator=torch.Generator().manual_seed(kernel_size))
    for ours_fn, theirs_fn in ((layers.conv, compressai_conv), (layers.deconv, compressai_deconv)):
        torch.manual_seed(0)
        ours = ours_fn(4, 6, kernel_size=kernel_size, stride=stride)
        torch.manual_seed(0)
        theirs = theirs_fn(4, 6, kernel_size=kernel_size, stride=stride)
        assert type(ours) is type(theirs)
        assert repr(ours) == repr(theirs)
        assert list(ours.state_dict()) == list(theirs.state_dict())
        for key, value in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[key], value), key
        assert torch.equal(ours(x), theirs(x))


def test_layers_do_not_import_compressai() -> None:
    import subprocess
    import sys

    code = "import sys, lsq.models.layers; print('compressai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert out.stdout.decode().strip() == "False"
