"""Model registry: discovery, selection rules, hashes and malformed weight folders."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from lsq.models import registry


def fake_model(folder: Path, name: str, family: str, quality: int, **extra) -> None:
    """A weights file with config metadata only: enough for listing and resolving."""
    config = {"name": name, "family": family, "quality": quality, "N": 8, "M": 24, **extra}
    save_file({"w": np.zeros(1, np.float32)}, str(folder / f"{name}.safetensors"),
              {"config": json.dumps(config)})


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(registry.WEIGHTS_ENV, str(tmp_path))
    for family, quality in [("leech", 3), ("scalar", 2), ("leech", 1), ("scalar", 1)]:
        fake_model(tmp_path, f"{family}-q{quality}", family, quality)
    (tmp_path / "registry.json").write_text(json.dumps({"default": "leech-q1"}))
    return tmp_path


def test_list_sorted_by_family_then_quality(folder: Path) -> None:
    names = [c["name"] for c in registry.list_models()]
    assert names == ["scalar-q1", "scalar-q2", "leech-q1", "leech-q3"]
    assert registry.default_name() == "leech-q1"


def test_resolve_rules(folder: Path) -> None:
    assert registry.resolve()["name"] == "leech-q1"
    assert registry.resolve(quality=3)["name"] == "leech-q3"  # default's family
    assert registry.resolve("scalar-q2")["name"] == "scalar-q2"
    assert registry.resolve("scalar", 1)["name"] == "scalar-q1"
    assert registry.resolve("scalar")["name"] == "scalar-q2"  # highest quality
    assert registry.resolve("leech")["name"] == "leech-q1"  # default within its family
    with pytest.raises(registry.UnknownModelError, match="valid models: scalar-q1"):
        registry.resolve("bsq")
    with pytest.raises(registry.UnknownModelError, match="has 1, 3"):
        registry.resolve("leech", 2)
    with pytest.raises(registry.UnknownModelError, match="has quality 2, not 1"):
        registry.resolve("scalar-q2", 1)


def test_no_default(folder: Path) -> None:
    (folder / "registry.json").unlink()
    with pytest.raises(registry.UnknownModelError, match="no default model"):
        registry.resolve()


def test_hash_is_sha256_prefix_and_verify(folder: Path) -> None:
    path = folder / "scalar-q1.safetensors"
    expected = hashlib.sha256(path.read_bytes()).digest()[:8]
    assert registry.weights_hash("scalar-q1") == expected
    registry.verify("scalar-q1", expected)
    with pytest.raises(registry.ModelMismatchError, match="differ"):
        registry.verify("scalar-q1", bytes(8))
    with pytest.raises(registry.ModelMismatchError, match="not installed"):
        registry.verify("../../etc/passwd", expected)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not safetensors", "cannot read weights"),
        ("no-config", "no valid JSON 'config'"),
        ("wrong-name", "differs from the file name"),
        ("bad-family", "unknown family"),
    ],
)
def test_malformed_weights(folder: Path, content: bytes | str, message: str) -> None:
    path = folder / "broken.safetensors"
    if content == "no-config":
        save_file({"w": np.zeros(1, np.float32)}, str(path), {"other": "x"})
    elif content == "wrong-name":
        fake_model(folder, "broken", "scalar", 1)
        fake_model(folder, "tmp", "scalar", 1)
        (folder / "tmp.safetensors").replace(path)
    elif content == "bad-family":
        fake_model(folder, "broken", "jpeg", 1)
    else:
        path.write_bytes(content)
    with pytest.raises(registry.RegistryError, match=message):
        registry.list_models()


def test_bad_registry_json(folder: Path) -> None:
    (folder / "registry.json").write_text(json.dumps({"default": "missing"}))
    with pytest.raises(registry.RegistryError, match="not shipped"):
        registry.list_models()


def test_weights_that_do_not_fit_their_config(folder: Path) -> None:
    with pytest.raises(registry.RegistryError, match="do not fit the model"):
        registry.load("scalar-q1")
