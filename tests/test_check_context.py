"""check_context tells a context model whose group transforms work from one whose are dead."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lsq.models import weights_file
from lsq.models.hyperprior import build_model
from lsq.tools import check_context

CONTEXT = {"context": "channel-groups"}


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "a.png")
    return folder


def saved(tmp_path: Path, dead: bool, options: dict = CONTEXT) -> Path:
    torch.manual_seed(0)
    net = build_model("scalar", N=16, M=48, **options)
    if "context" in options:
        with torch.no_grad():
            for t in net.latent_codec.transforms:
                torch.nn.init.normal_(t[-1].weight, std=0.05)
                if dead:  # the last hidden layer below zero everywhere, as in a dead ReLU run's
                    t[-3].bias.fill_(-1e4)
    config = dict(name="m", family="scalar", qualities=[1, 8], default_quality=3,
                  codec_options=options, N=16, M=48)
    return weights_file.save(net.state_dict(), tmp_path / "m.safetensors", config)


@pytest.mark.parametrize(("kind", "dead"), [("full", False), ("separable", True)])
def test_reports_active_units_and_the_contexts_effect(tmp_path: Path, dataset: Path, kind: str,
                                                      dead: bool,
                                                      capsys: pytest.CaptureFixture) -> None:
    path = saved(tmp_path, dead, {**CONTEXT, "group_transform": kind})
    check_context.main(["--weights", str(path), "--dataset", str(dataset),
                        "--qualities", "2", "7"])
    lines = capsys.readouterr().out.splitlines()
    groups = [line for line in lines if line.startswith("group")]
    assert len(groups) == 2  # M = 48: groups of 24 and 24
    last_hidden = [int(line.rsplit(", ", 1)[1].removesuffix(" %")) for line in groups]
    assert all(share == 0 if dead else share > 50 for share in last_hidden), groups
    changes = [line.rsplit("(", 1)[1] for line in lines if line.startswith("quality")]
    assert len(changes) == 2
    assert all(c in ("+0.00 %)", "-0.00 %)") for c in changes) == dead, lines


def test_refuses_what_it_cannot_check(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(SystemExit, match="not a channel-groups context model"):
        check_context.main(["--weights", str(saved(tmp_path, False, {})),
                            "--dataset", str(dataset)])
    with pytest.raises(SystemExit, match="cannot read weights"):
        check_context.main(["--weights", str(tmp_path / "none.safetensors")])
    path = saved(tmp_path, False)
    with pytest.raises(SystemExit, match="no PNG images"):
        check_context.main(["--weights", str(path), "--dataset", str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match=r"qualities must lie in \[1, 8\]"):
        check_context.main(["--weights", str(path), "--dataset", str(dataset),
                            "--qualities", "9"])
