"""Model registry: discovery, selection rules, hashes and malformed weight folders."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from lsq.models import registry

REPO_WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "weights"


def fake_model(folder: Path, name: str, family: str, qualities: list, default=None,
               **extra) -> None:
    """A weights file with config metadata only: enough for listing and resolving."""
    config = {"name": name, "family": family, "qualities": qualities, "N": 8, "M": 24,
              "default_quality": qualities[0] if default is None else default, **extra}
    save_file({"w": np.zeros(1, np.float32)}, str(folder / f"{name}.safetensors"),
              {"config": json.dumps(config)})


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(registry.WEIGHTS_ENV, str(tmp_path))
    fake_model(tmp_path, "leech", "leech", [1, 8], 4)
    fake_model(tmp_path, "scalar-hi", "scalar", [5, 8])
    fake_model(tmp_path, "scalar-lo", "scalar", [1, 4])
    fake_model(tmp_path, "bsq-q4", "bsq", [4, 4])
    (tmp_path / "registry.json").write_text(json.dumps({"default": "leech"}))
    return tmp_path


def test_list_sorted_by_family_then_quality(folder: Path) -> None:
    names = [c["name"] for c in registry.list_models()]
    assert names == ["bsq-q4", "leech", "scalar-lo", "scalar-hi"]
    assert registry.default_name() == "leech"
    assert [registry.describe_qualities(c) for c in registry.list_models()] == [
        "4", "1-8", "1-4", "5-8"]


def test_resolve_rules(folder: Path) -> None:
    assert registry.resolve()["name"] == "leech"
    assert registry.resolve(quality=3.5)["name"] == "leech"  # default's family
    assert registry.resolve("scalar-lo")["name"] == "scalar-lo"
    assert registry.resolve("scalar", 2.5)["name"] == "scalar-lo"
    assert registry.resolve("scalar", 6)["name"] == "scalar-hi"
    assert registry.resolve("scalar")["name"] == "scalar-hi"  # highest qualities
    assert registry.resolve("bsq", 4)["name"] == "bsq-q4"
    with pytest.raises(registry.UnknownModelError, match="valid models: bsq-q4"):
        registry.resolve("spherical-leech")
    with pytest.raises(registry.UnknownModelError, match="has 4"):
        registry.resolve("bsq", 2)
    with pytest.raises(registry.UnknownModelError, match="has qualities 1-4, not 5"):
        registry.resolve("scalar-lo", 5)


def test_pick_quality(folder: Path) -> None:
    assert registry.pick_quality(registry.get_config("leech"), None) == 4.0
    assert registry.pick_quality(registry.get_config("leech"), 7.5) == 7.5
    assert registry.pick_quality(registry.get_config("bsq-q4"), None) == 4.0
    with pytest.raises(registry.UnknownModelError, match="has qualities 5-8, not 4.5"):
        registry.pick_quality(registry.get_config("scalar-hi"), 4.5)


def test_no_default(folder: Path) -> None:
    (folder / "registry.json").unlink()
    with pytest.raises(registry.UnknownModelError, match="no default model"):
        registry.resolve()


def test_hash_is_sha256_prefix_and_verify(folder: Path) -> None:
    path = folder / "scalar-lo.safetensors"
    expected = hashlib.sha256(path.read_bytes()).digest()[:8]
    assert registry.weights_hash("scalar-lo") == expected
    registry.verify("scalar-lo", expected)
    assert registry.find_weights("scalar-lo", expected) == path
    installed = ("the installed weights differ: "
                 f"scalar-lo an unreleased version \\(weights {expected.hex()}")
    with pytest.raises(registry.ModelMismatchError, match=r"needs model 'scalar-lo' in an "
                       r"unreleased version \(weights 0{16}\), but " + installed):
        registry.verify("scalar-lo", bytes(8))
    with pytest.raises(registry.ModelMismatchError, match="not installed"):
        registry.verify("../../etc/passwd", expected)


def test_versions_name_the_release_that_has_them(folder: Path) -> None:
    """Hashes of the version table give versions; a missing version says where it lives."""
    digest = registry.weights_hash("scalar-lo")
    table = {"scalar-lo": [{"version": 2, "hash": digest.hex(), "where": "release B"},
                           {"version": 1, "hash": "ab" * 8, "where": "release A"}]}
    (folder / "registry.json").write_text(json.dumps({"default": "leech", "versions": table}))
    assert registry.version_of("scalar-lo", digest) == 2
    assert registry.version_of("scalar-lo", bytes(8)) == 0
    assert registry.describe_version("scalar-lo", digest) == (
        f"scalar-lo version 2 (weights {digest.hex()})")
    assert [e["version"] for e in registry.versions("scalar-lo")] == [2, 1]
    with pytest.raises(registry.ModelMismatchError) as err:
        registry.verify("scalar-lo", bytes.fromhex("ab" * 8))
    message = str(err.value)
    assert "needs model 'scalar-lo' version 1 (weights abababababababab)" in message
    assert f"differ: scalar-lo version 2 (weights {digest.hex()})" in message
    assert "get it from release A" in message and "scalar-lo@1.safetensors" in message
    fake_model(folder, "tmp", "scalar", [1, 4])  # a second installed version, under a label
    (folder / "tmp.safetensors").replace(folder / "scalar-lo@old.safetensors")
    with pytest.raises(registry.RegistryError, match="differs from the file name"):
        registry.installed("scalar-lo")
    fake_model(folder, "scalar-lo", "scalar", [1, 4], 2)
    (folder / "scalar-lo.safetensors").replace(folder / "scalar-lo@old.safetensors")
    fake_model(folder, "scalar-lo", "scalar", [1, 4])
    old = registry.installed("scalar-lo")[1]
    assert old[1].name == "scalar-lo@old.safetensors"
    assert registry.find_weights("scalar-lo", old[2]) == old[1]
    assert "scalar-lo@old" not in [c["name"] for c in registry.list_models()]


def test_malformed_version_table(folder: Path) -> None:
    (folder / "registry.json").write_text(json.dumps({"versions": {"x": [{"version": 1}]}}))
    with pytest.raises(registry.RegistryError, match="malformed \"versions\" table"):
        registry.list_models()


def test_packaged_version_table_covers_the_shipped_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every weights file in the repository is version 1 of its name in the packaged table."""
    monkeypatch.setenv(registry.WEIGHTS_ENV, str(REPO_WEIGHTS))
    for name, path, digest in registry.installed():
        assert registry.version_of(name, digest) == 1, path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not safetensors", "cannot read weights"),
        ("no-config", "no valid JSON 'config'"),
        ("wrong-name", "differs from the file name"),
        ("bad-qualities", "qualities must be"),
        ("bad-default", "default quality outside"),
    ],
)
def test_malformed_weights(folder: Path, content: bytes | str, message: str) -> None:
    path = folder / "broken.safetensors"
    if content == "no-config":
        save_file({"w": np.zeros(1, np.float32)}, str(path), {"other": "x"})
    elif content == "wrong-name":
        fake_model(folder, "broken", "scalar", [1, 1])
        fake_model(folder, "tmp", "scalar", [1, 1])
        (folder / "tmp.safetensors").replace(path)
    elif content == "bad-qualities":
        fake_model(folder, "broken", "scalar", [5, 2])
    elif content == "bad-default":
        fake_model(folder, "broken", "scalar", [1, 3], 4)
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
        registry.load("scalar-lo")
    fake_model(folder, "hexagonal", "hexagonal", [1, 8])
    with pytest.raises(registry.RegistryError, match="unknown quantizer 'hexagonal'"):
        registry.load("hexagonal")


def test_the_wheel_ships_the_default_model() -> None:
    """pyproject's package data names registry.json, the default model and files that exist;
    every weights file of the repository is in the version table, shipped or not."""
    tomllib = pytest.importorskip("tomllib")
    root = REPO_WEIGHTS.parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())
    shipped = data["tool"]["setuptools"]["package-data"]["lsq.models"]
    default = json.loads((REPO_WEIGHTS / "registry.json").read_text())["default"]
    assert "weights/registry.json" in shipped
    assert f"weights/{default}.safetensors" in shipped
    assert all((root / "models" / f).is_file() for f in shipped)
    table = json.loads((REPO_WEIGHTS / "registry.json").read_text())["versions"]
    assert sorted(table) == sorted(p.stem for p in REPO_WEIGHTS.glob("*.safetensors"))


def test_every_model_says_what_it_is_for(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from lsq.cli.main import main as lsq_main

    monkeypatch.setenv(registry.WEIGHTS_ENV, str(REPO_WEIGHTS))
    names = sorted(p.stem for p in REPO_WEIGHTS.glob("*.safetensors"))
    known = registry.purposes()
    assert all(known.get(name) for name in names)
    assert "no-such-model" not in known
    out = CliRunner().invoke(lsq_main, ["models"]).output
    default = registry.default_name()
    assert f"  {default:20} {known[default]}" in out.split("what each is for:")[1]
