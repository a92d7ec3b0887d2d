"""Evaluation pipeline: metrics, Pillow baselines, RD engine, BD-rate, plots and CLI."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from compressai.utils.plot.__main__ import parse_json_file
from PIL import Image

from lsq.cli import evaluate
from lsq.cli.evaluate import bdrate_cmd, eval_cmd, plot_cmd
from lsq.eval import curves, metrics, rd
from lsq.eval.baselines import BASELINES
from lsq.eval.bdrate import bd_rate, bd_table, format_markdown
from lsq.eval.plot import plot_rd

CROP = 176  # smallest convenient size above MS-SSIM's 160-pixel minimum
REPO = Path(__file__).resolve().parents[1]
SHIPPED_RESULTS = REPO / "eval" / "results"
COMPRESSAI_COMMIT = "869a9f5d4126d015b7de8f203fe60ee9e1608193"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """MS-SSIM on tiny crops is slower with a thread pool on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory, kodak: Path) -> Path:
    """Two CROPxCROP crops of kodim01/kodim02, written as PNG into a temporary dataset."""
    root = tmp_path_factory.mktemp("kodak_crops")
    for i in (1, 2):
        with Image.open(kodak / f"kodim{i:02d}.png") as im:
            im.convert("RGB").crop((200, 100, 200 + CROP, 100 + CROP)).save(root / f"k{i}.png")
    return root


def _ref_images(root: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p).convert("RGB")) for p in sorted(root.glob("*.png"))}


class CountingCodec:
    """Fake codec: stores the image raw minus a quantization step; counts encode calls."""

    name = "fake"
    description = "test double"
    qualities = (2, 8, 32)

    def __init__(self) -> None:
        self.encode_calls = 0

    def encode(self, rgb: np.ndarray, quality: int) -> bytes:
        self.encode_calls += 1
        header = np.array([rgb.shape[0], rgb.shape[1], quality], dtype=np.uint16).tobytes()
        return header + (rgb // quality).astype(np.uint8).tobytes()

    def decode(self, data: bytes) -> np.ndarray:
        h, w, q = np.frombuffer(data[:6], dtype=np.uint16)
        body = np.frombuffer(data[6:], dtype=np.uint8).reshape(h, w, 3)
        return (body.astype(np.int32) * q + q // 2).clip(0, 255).astype(np.uint8)


def test_metrics_known_values() -> None:
    a = np.zeros((200, 200, 3), dtype=np.uint8)
    b = a.copy()
    b[..., 0] = 10  # MSE = 100 / 3
    assert metrics.psnr(a, a) == math.inf
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / (100 / 3)))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
    assert metrics.ms_ssim(x, x) == pytest.approx(1.0)
    assert math.isnan(metrics.ms_ssim(x[:64, :64], x[:64, :64]))
    assert metrics.bpp(96, 32 * 24) == 1.0
    with pytest.raises(ValueError):
        metrics.psnr(a.astype(np.float32), b)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_engine_matches_independent_recomputation(name: str, crops: Path, tmp_path: Path) -> None:
    full = BASELINES[name]
    if not full.available():
        pytest.skip(full.unavailable_reason())
    # Lowest, middle and highest point of the real sweep keep the test fast.
    qs = full.qualities
    codec = replace(full, qualities=(qs[0], qs[len(qs) // 2], qs[-1]))
    summary = rd.evaluate(crops, [codec], tmp_path, progress=False)
    data = json.loads((tmp_path / f"{name}.json").read_text())
    assert summary.written == [tmp_path / f"{name}.json"]
    res = data["results"]
    assert data["num_images"] == 2 and len(res["bpp"]) == len(codec.qualities)
    assert res["bpp"] == sorted(res["bpp"])
    refs = _ref_images(crops)
    for q, bpp_json, psnr_json in zip(res["quality"], res["bpp"], res["psnr-rgb"], strict=True):
        bpps, psnrs = [], []
        for ref in refs.values():
            blob = codec.encode(ref, q)
            rec = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"), dtype=np.float64)
            bpps.append(len(blob) * 8 / (ref.shape[0] * ref.shape[1]))
            psnrs.append(10 * np.log10(255**2 / np.mean((rec - ref) ** 2)))
        assert bpp_json == pytest.approx(np.mean(bpps), rel=1e-12)
        assert psnr_json == pytest.approx(np.mean(psnrs), rel=1e-9)
    assert all(0 < v < 1 for v in res["ms-ssim"])


def test_results_read_by_compressai_plot_loader(crops: Path, tmp_path: Path) -> None:
    rd.evaluate(crops, [CountingCodec()], tmp_path, progress=False)
    path = tmp_path / "fake.json"
    data = json.loads(path.read_text())
    assert {"name", "description", "results"} <= data.keys()
    assert {
        "bpp",
        "psnr-rgb",
        "ms-ssim-rgb",
        "ms-ssim",
        "ms-ssim-db",
        "encoding_time",
        "decoding_time",
        "quality",
    } <= data["results"].keys()
    psnr = parse_json_file(path, "psnr")
    assert psnr["name"] == "fake" and psnr["xs"] == data["results"]["bpp"]
    assert psnr["ys"] == data["results"]["psnr-rgb"]
    msssim = parse_json_file(path, "ms-ssim")
    np.testing.assert_allclose(msssim["ys"], data["results"]["ms-ssim-db"])
    for ref in curves.load_references():
        assert ref["reference"] and ref["source"]["license"]
        assert ref["results"]["bpp"] == sorted(ref["results"]["bpp"])


def test_resume_from_cache_does_not_recompute(crops: Path, tmp_path: Path) -> None:
    codec = CountingCodec()
    rd.evaluate(crops, [codec], tmp_path, progress=False)
    assert codec.encode_calls == 6
    first = (tmp_path / "fake.json").read_text()
    rd.evaluate(crops, [codec], tmp_path, progress=False)
    assert codec.encode_calls == 6
    assert (tmp_path / "fake.json").read_text() == first
    # Interrupted run: last record missing and a torn line at the end of the cache.
    cache = tmp_path / ".cache" / "fake.jsonl"
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:-1]) + '\n{"codec": "fake", "qual')
    rd.evaluate(crops, [codec], tmp_path, progress=False)
    assert codec.encode_calls == 7
    assert json.loads((tmp_path / "fake.json").read_text())["results"]["bpp"] == pytest.approx(
        json.loads(first)["results"]["bpp"]
    )
    # Another version of the codec (retrained weights) is measured afresh, all of it.
    codec.version = "retrained"
    rd.evaluate(crops, [codec], tmp_path, progress=False)
    assert codec.encode_calls == 13


def test_baseline_version_names_library_and_options() -> None:
    jpeg = BASELINES["jpeg-420"]
    assert jpeg.version.startswith(f"Pillow {Image.__version__}, jpg ")
    assert jpeg.version != BASELINES["jpeg-444"].version  # other subsampling option
    assert replace(jpeg, qualities=(10,)).version == jpeg.version


def test_parallel_jobs_equal_serial(crops: Path, tmp_path: Path) -> None:
    codec = replace(BASELINES["jpeg-420"], qualities=(10, 50, 90))
    rd.evaluate(crops, [codec], tmp_path / "serial", jobs=1, progress=False)
    rd.evaluate(crops, [codec], tmp_path / "parallel", jobs=2, progress=False)
    serial = json.loads((tmp_path / "serial" / "jpeg-420.json").read_text())["results"]
    parallel = json.loads((tmp_path / "parallel" / "jpeg-420.json").read_text())["results"]
    for key in ("quality", "bpp", "psnr-rgb", "ms-ssim"):
        assert parallel[key] == serial[key]


def _curve(name: str, bpp: list[float], psnr: list[float]) -> dict:
    return {"name": name, "results": {"bpp": bpp, "psnr-rgb": psnr, "ms-ssim-db": psnr}}


def test_bdrate_self_zero_shift_and_no_overlap() -> None:
    bpp = [0.12, 0.25, 0.5, 0.9, 1.6]
    psnr = [27.0, 29.5, 32.0, 34.8, 37.9]
    assert abs(bd_rate(bpp, psnr, bpp, psnr)) < 1e-9
    # Same quality at 90% of the rate everywhere: exactly -10 %.
    assert bd_rate(bpp, psnr, [0.9 * b for b in bpp], psnr) == pytest.approx(-10.0, abs=1e-9)
    assert math.isnan(bd_rate(bpp, psnr, bpp, [p + 20 for p in psnr]))
    # A saturated point (no PSNR gain) is dropped instead of breaking the interpolation.
    assert abs(bd_rate(bpp, psnr, [*bpp, 2.0], [*psnr, 37.9])) < 1e-9
    rows = bd_table(
        [_curve("a", bpp, psnr), _curve("far", bpp, [p + 20 for p in psnr])], "a", ["psnr"]
    )
    table = format_markdown(rows, "a", ["psnr"])
    assert "| a | +0.00 |" in table and "| far | n/a |" in table


def test_lsq_adapter_uses_registry_family(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    registry = types.ModuleType("lsq.models.registry")
    registry.list_models = lambda: [  # type: ignore[attr-defined]
        {"name": "leech-hi", "family": "leech", "qualities": [6, 7]},
        {"name": "scalar-q1", "family": "scalar", "qualities": [1, 1]},
        {"name": "leech-lo", "family": "leech", "qualities": [2, 3]},
    ]
    image_codec = types.ModuleType("lsq.image_codec")

    def encode_image(img: Image.Image, model: str, quality: int | None = None, device="cpu"):
        calls.append(("enc", f"{model}@{quality}"))
        return model.encode() + b"|" + img.tobytes()

    def decode_image(data: bytes, device: str = "cpu") -> Image.Image:
        calls.append(("dec", device))
        return Image.frombytes("RGB", (4, 2), data.split(b"|", 1)[1])

    image_codec.encode_image = encode_image  # type: ignore[attr-defined]
    image_codec.decode_image = decode_image  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lsq.models.registry", registry)
    monkeypatch.setitem(sys.modules, "lsq.image_codec", image_codec)

    (codec,) = rd.resolve_codecs(["lsq:leech"])
    assert codec.name == "lsq-leech" and codec.available() and codec.qualities == (2, 3, 6, 7)
    rgb = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert codec.encode(rgb, 3).startswith(b"leech-lo|")
    np.testing.assert_array_equal(codec.decode(codec.encode(rgb, 6)), rgb)
    assert calls == [("enc", "leech-lo@3"), ("enc", "leech-hi@6"), ("dec", "cpu")]
    (single,) = rd.resolve_codecs(["lsq:scalar-q1"])
    assert single.qualities == (1,)
    missing = rd.LsqCodec("nope")
    assert not missing.available() and "nope" in missing.unavailable_reason()
    # retraining one model of the family (its config records the steps) changes the version
    before = rd.LsqCodec("leech").version
    models = registry.list_models()
    registry.list_models = lambda: [{**m, "steps": 10} if m["name"] == "leech-hi" else m
                                    for m in models]
    assert rd.LsqCodec("leech").version != before
    registry.list_models = lambda: [{**m, "default_quality": 5} for m in models]
    assert rd.LsqCodec("leech").version == before
    assert rd.LsqCodec("scalar").version == single.version


def test_plot_writes_png_and_svg(tmp_path: Path) -> None:
    measured = [_curve("a", [0.1, 0.5, 1.0], [28.0, 32.0, 35.0])]
    paths = plot_rd(measured, tmp_path / "rd.png", references=curves.load_references())
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"bmshj2018-hyperprior (CompressAI published)" in paths[1].read_bytes()


def test_cli_success_and_error_paths(crops: Path, tmp_path: Path) -> None:
    # cli/main.py looks the commands up by these attribute names.
    assert (evaluate.eval, evaluate.plot, evaluate.bdrate) == (eval_cmd, plot_cmd, bdrate_cmd)
    assert [c.name for c in (eval_cmd, plot_cmd, bdrate_cmd)] == ["eval", "plot", "bdrate"]
    runner = CliRunner()
    out = tmp_path / "res"

    def run(cmd, args: list[str]):
        result = runner.invoke(cmd, args)
        assert "Traceback" not in result.output
        return result

    args = ["--dataset", str(crops), "--codecs", "jpeg2000", "--out", str(out), "--limit", "1"]
    ok = run(eval_cmd, args)
    assert ok.exit_code == 0 and json.loads((out / "jpeg2000.json").read_text())["num_images"] == 1
    table = run(bdrate_cmd, [str(out), "--anchor", "jpeg2000", "--metric", "psnr"])
    assert table.exit_code == 0 and "| jpeg2000 | +0.00 |" in table.output
    plotted = run(plot_cmd, [str(out), "-o", str(tmp_path / "p.png")])
    assert plotted.exit_code == 0 and (tmp_path / "p.svg").exists()

    errors = [
        (eval_cmd, ["--dataset", str(tmp_path / "none"), "--out", str(out)], "not found"),
        (eval_cmd, ["--dataset", str(crops), "--codecs", "gif", "--out", str(out)], "unknown"),
        (eval_cmd, ["--dataset", str(crops), "--codecs", "lsq:nope", "--out", str(out)], "nope"),
        (plot_cmd, [str(tmp_path / "empty_missing"), "-o", str(tmp_path / "x.png")], "not found"),
        (plot_cmd, [str(crops), "-o", str(tmp_path / "x.png")], "no results"),
        (plot_cmd, [str(out), "-o", str(tmp_path / "x.pdf")], ".png"),
        (bdrate_cmd, [str(out), "--anchor", "vvc"], "anchor 'vvc'"),
    ]
    for cmd, args, needle in errors:
        result = run(cmd, args)
        assert result.exit_code != 0, args
        last = result.output.strip().splitlines()[-1]
        assert last.startswith("Error:") and needle in last, result.output


def _bd_rows(output: str) -> dict[str, str]:
    """codec label -> first BD-rate cell of a Markdown table printed by ``lsq bdrate``."""
    rows = re.findall(r"^\| (.+?) \| ([^|]+?) \|", output, flags=re.MULTILINE)
    return {name: cell for name, cell in rows if name != "codec"}


def test_bdrate_anchor_vtm_on_shipped_results() -> None:
    runner = CliRunner()
    shipped = sorted(p.stem for p in SHIPPED_RESULTS.glob("*.json"))
    assert {"avif", "avif-slow", "lsq-leech", "lsq-leech-cgf"} <= set(shipped)
    result = runner.invoke(bdrate_cmd, [str(SHIPPED_RESULTS), "--anchor", "vtm", "--metric",
                                        "psnr", "--method", "cubic"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("BD-rate vs vtm on Kodak (24 images) (cubic;")
    rows = _bd_rows(result.output)
    for name in shipped:
        assert re.fullmatch(r"[+-]\d+\.\d\d", rows[name]), (name, rows[name])
    refs = curves.load_references()
    assert {f"{r['name']} (CompressAI published)" for r in refs} <= set(rows)
    assert rows["av1 (CompressAI published)"] == "+16.22"
    # The classic cubic fit gives the PSNR BD-rates against VTM that published tables quote.
    published = {r["name"]: r["psnr"] for r in bd_table(refs, "vtm", ["psnr"], "cubic")}
    expected = {"vtm": 0.0, "elic2022": -7.2, "minnen2020-cc10": 1.1, "cheng2020-anchor": 3.8,
                "av1": 16.2, "mbt2018-mean": 21.0, "bpg-444": 22.1}
    assert {k: round(published[k], 1) for k in expected} == expected
    # The default akima interpolation differs by a few tenths; the anchor's case is free.
    akima = runner.invoke(bdrate_cmd, [str(SHIPPED_RESULTS), "--anchor", "VTM", "--metric",
                                       "psnr", "--references", "none"])
    assert akima.exit_code == 0, akima.output
    rows = _bd_rows(akima.output)
    assert rows["vtm (CompressAI published)"] == "+0.00" and "elic2022" not in akima.output
    assert set(rows) == {*shipped, "vtm (CompressAI published)"}
    assert float(rows["lsq-leech"]) == pytest.approx(45.89, abs=0.01)


def _write_curve(folder: Path, name: str, **fields: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = {**_curve(name, [0.1, 0.5, 1.0], [28.0, 32.0, 35.0]), **fields}
    (folder / f"{name}.json").write_text(json.dumps(data))


def test_published_curves_only_beside_all_of_kodak(tmp_path: Path) -> None:
    runner = CliRunner()
    other = tmp_path / "results"
    _write_curve(other, "a", dataset="clic", num_images=2)
    _write_curve(other, "b", dataset="clic", num_images=2)
    plotted = runner.invoke(plot_cmd, [str(other), "-o", str(tmp_path / "clic.png")])
    assert plotted.exit_code == 0, plotted.output
    assert "warning: published curves are Kodak's" in plotted.output
    svg = (tmp_path / "clic.svg").read_bytes()
    assert b"clic (2 images)" in svg and b"CompressAI published" not in svg
    table = runner.invoke(bdrate_cmd, [str(other), "--anchor", "a", "--metric", "psnr"])
    assert table.exit_code == 0 and "on clic (2 images)" in table.output
    assert "published)" not in table.output and "| b | +0.00 |" in table.output
    vtm = runner.invoke(bdrate_cmd, [str(other), "--anchor", "vtm"])
    assert vtm.exit_code != 0
    assert vtm.output.strip().splitlines()[-1] == (
        "Error: anchor 'vtm' is a published Kodak curve; these results are on clic (2 images)")

    # No dataset recorded: Kodak only when the folder's name says so.
    _write_curve(tmp_path / "kodak-results", "a")
    kodak = runner.invoke(bdrate_cmd, [str(tmp_path / "kodak-results"), "--anchor", "vtm",
                                       "--metric", "psnr", "--references", "av1,vtm"])
    assert kodak.exit_code == 0, kodak.output
    assert set(_bd_rows(kodak.output)) == {
        "a", "av1 (CompressAI published)", "vtm (CompressAI published)"}
    _write_curve(tmp_path / "mine", "a")
    assert curves.title_of(curves.load_results(tmp_path / "mine")) == "dataset not recorded"
    assert not curves.on_kodak(curves.load_results(tmp_path / "mine"))
    # Part of Kodak (--limit) is not the set the published curves average over.
    _write_curve(tmp_path / "part", "a", dataset="kodak", num_images=3)
    part = curves.load_results(tmp_path / "part")
    assert not curves.on_kodak(part) and curves.title_of(part) == "kodak (3 images)"
    _write_curve(tmp_path / "full", "a", dataset="kodak", num_images=24)
    assert curves.title_of(curves.load_results(tmp_path / "full")) == "Kodak (24 images)"

    _write_curve(other, "c", dataset="kodak", num_images=24)
    mixed = runner.invoke(plot_cmd, [str(other), "-o", str(tmp_path / "mixed.png")])
    assert mixed.exit_code != 0 and not (tmp_path / "mixed.png").exists()
    assert "different datasets: a: clic (2 images); b: clic (2 images); c: kodak (24 images)" \
        in mixed.output
    bad = runner.invoke(plot_cmd, [str(tmp_path / "full"), "-o", str(tmp_path / "x.png"),
                                   "--references", "vtm,vvc"])
    assert bad.exit_code != 0 and "unknown published curve vvc (known: all, none, " in bad.output


def test_eval_records_dataset_folder(crops: Path, tmp_path: Path) -> None:
    rd.evaluate(crops, [CountingCodec()], tmp_path, progress=False)
    data = json.loads((tmp_path / "fake.json").read_text())
    assert (data["dataset"], data["num_images"]) == (crops.name, 2)
    (loaded,) = curves.load_results(tmp_path)
    assert loaded["dataset"] == crops.name


def test_reference_curves_name_their_source() -> None:
    refs = curves.load_references()
    names = [r["name"] for r in refs]
    assert len(set(names)) == len(names)
    assert set(curves.HEADLINE_REFERENCES) <= set(names)
    sources = (REPO / "eval" / "reference" / "SOURCES.md").read_text()
    assert COMPRESSAI_COMMIT in sources
    licence = (REPO / "eval" / "reference" / "LICENSE-CompressAI.txt").read_text()
    assert licence.startswith("Copyright (c) 2021-2024, InterDigital Communications, Inc")
    for ref in refs:
        src = ref["source"]
        assert src["commit"] == COMPRESSAI_COMMIT
        assert src["url"].endswith(f"/{COMPRESSAI_COMMIT}/{src['path']}")
        assert f"`{Path(src['path']).name}` | `{ref['name']}`" in sources
        assert (ref["dataset"], ref["num_images"]) == ("kodak", 24)
        res = ref["results"]
        assert all(len(v) == len(res["bpp"]) for v in res.values())


def test_plot_and_bdrate_commands_do_not_import_torch() -> None:
    code = ("import sys; import lsq.cli.evaluate, lsq.eval.curves, lsq.eval.bdrate, "
            "lsq.eval.plot; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
