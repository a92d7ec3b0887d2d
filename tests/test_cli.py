"""End-to-end tests of `lsq` through real subprocesses, with a tiny model fixture.

The fixture writes two tiny models into a temporary folder and points LSQ_WEIGHTS_DIR at
it. Commands that load torch take seconds each on CPU, so the image round trips run
concurrently (all encodes, then all decodes) and the error cases that fail before torch
is imported run one by one.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from lsq.cli import main as cli_main
from lsq.models import weights_file
from lsq.models.hyperprior import build_model
from lsq.models.latent_codecs import ScalarLatentCodec
from lsq.tools import bench_cli
from lsq.tools.bench_cli import unwritable_folder

TIMEOUT = 120
TINY = {"N": 8, "M": 24}


def make_weights(folder: Path) -> None:
    """Two tiny scalar models and a registry naming the first: tiny-scalar-q1 variable-rate
    over qualities 1..5 (default 1, fp32 file), tiny-scalar-q6 fixed-rate at 6 (fp16 file)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for name, qualities, half in (("tiny-scalar-q1", (1, 5), False),
                                  ("tiny-scalar-q6", (6, 6), True)):
        net = build_model("scalar", qualities=qualities, **TINY)
        net.update(force=True)
        config = dict(name=name, family="scalar", qualities=list(qualities),
                      default_quality=qualities[0], steps=0, command="tests/test_cli.py", **TINY)
        weights_file.save(net.state_dict(), folder / f"{name}.safetensors", config, half=half)
    (folder / "registry.json").write_text(json.dumps({"default": "tiny-scalar-q1"}))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("weights")
    make_weights(folder)
    return {**os.environ, "LSQ_WEIGHTS_DIR": str(folder), "PYTHONWARNINGS": "ignore"}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lsq.cli.main", *map(str, args)]


def lsq(env: dict[str, str], *args: str, stdin: bytes | None = None):
    return subprocess.run(command(*args), input=stdin, capture_output=True, env=env,
                          timeout=TIMEOUT)


def lsq_many(env: dict[str, str], jobs: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Run several commands at once: torch start-up dominates, so overlap it."""
    procs = [subprocess.Popen(command(*job), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env) for job in jobs]
    results = []
    for job, proc in zip(jobs, procs, strict=True):
        out, err = proc.communicate(timeout=TIMEOUT)
        results.append(subprocess.CompletedProcess(job, proc.returncode, out, err))
    return results


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Non-zero exit, exactly one stderr line, no traceback, and the expected words."""
    err = result.stderr.decode()
    assert result.returncode != 0, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


def rng_image(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(arr.squeeze(-1) if channels == 1 else arr)


def gray16(size: tuple[int, int]) -> Image.Image:
    w, h = size
    arr = (np.arange(w * h, dtype=np.uint16).reshape(h, w) * 50).astype(np.uint16)
    return Image.fromarray(arr)


def palette_gif(size: tuple[int, int], transparent: bool) -> bytes:
    img = rng_image("RGB", size, seed=3).quantize(16)
    buf = io.BytesIO()
    img.save(buf, "GIF", **({"transparency": 0} if transparent else {}))
    return buf.getvalue()


def encoded_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


# name -> (input file name, input bytes maker, decoded mode expected or None, note expected)
CASES = {
    "one": ("one.png", lambda: encoded_bytes(rng_image("RGB", (1, 1))), "RGB", None),
    "gray": ("gray.png", lambda: encoded_bytes(rng_image("L", (33, 17))), None, "grayscale"),
    "gray16": ("g16.png", lambda: encoded_bytes(gray16((40, 30))), None, "16-bit reduced"),
    "rgba": ("rgba.png", lambda: encoded_bytes(rng_image("RGBA", (50, 40))), "RGBA", "alpha"),
    "gif": ("pal.gif", lambda: palette_gif((30, 20), False), None, "palette"),
}


@pytest.fixture(scope="module")
def coded(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Encode every case, then decode those with an expected mode, each phase concurrently."""
    folder = tmp_path_factory.mktemp("coded")
    for file_name, make, _, _ in CASES.values():
        (folder / file_name).write_bytes(make())
    names = list(CASES)
    encodes = lsq_many(env, [["encode", folder / CASES[n][0], "-o", folder / f"{n}.lsq"]
                             for n in names])
    to_decode = [n for n in names if CASES[n][2]]
    decodes = lsq_many(env, [["decode", folder / f"{n}.lsq", "-o", folder / f"{n}.out.png"]
                             for n in to_decode])
    decoded = dict(zip(to_decode, decodes, strict=True))
    return {
        n: {"src": folder / CASES[n][0], "lsq": folder / f"{n}.lsq",
            "out": folder / f"{n}.out.png", "enc": e, "dec": decoded.get(n)}
        for n, e in zip(names, encodes, strict=True)
    }


@pytest.mark.parametrize("case", list(CASES))
def test_encode_and_decode_restore_size_and_mode(env: dict[str, str], coded: dict,
                                                 case: str) -> None:
    result = coded[case]
    assert result["enc"].returncode == 0, result["enc"].stderr.decode()
    out = result["enc"].stdout.decode()
    assert "bpp" in out and "tiny-scalar-q1" in out and result["enc"].stderr == b""
    note = CASES[case][3]
    if note:
        assert note in out
    original = Image.open(result["src"])
    info = json.loads(lsq(env, "info", "--json", result["lsq"]).stdout)
    assert (info["width"], info["height"], info["mode"]) == (*original.size, original.mode)
    if result["dec"] is None:
        return
    assert result["dec"].returncode == 0, result["dec"].stderr.decode()
    decoded = Image.open(result["out"])
    assert decoded.size == original.size
    assert decoded.mode == CASES[case][2]
    if "A" in decoded.mode:  # alpha is lossless
        src_alpha = original.getchannel("A")
        assert np.array_equal(np.asarray(decoded.getchannel("A")), np.asarray(src_alpha))


def test_info_text_and_json(env: dict[str, str], coded: dict) -> None:
    text = lsq(env, "info", coded["rgba"]["lsq"])
    assert text.returncode == 0
    assert "tiny-scalar-q1" in text.stdout.decode() and "alpha" in text.stdout.decode()
    result = lsq(env, "info", "--json", coded["rgba"]["lsq"])
    info = json.loads(result.stdout)
    assert info["width"] == 50 and info["height"] == 40 and info["mode"] == "RGBA"
    assert info["flags"] == ["alpha"] and info["bytes"] == coded["rgba"]["lsq"].stat().st_size
    assert len(info["section_lengths"]) == 3 and info["version"] == 4 and info["quality"] == 1.0


def test_stdin_stdout_pipeline(env: dict[str, str], coded: dict) -> None:
    """`lsq encode - -o - | lsq decode - -o -`: both ends of both commands on pipes."""
    src = coded["gray"]["src"].read_bytes()
    enc = subprocess.Popen(command("encode", "-", "-o", "-"), stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    dec = subprocess.Popen(command("decode", "-", "-o", "-"), stdin=enc.stdout,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    enc.stdout.close()
    enc.stdin.write(src)
    enc.stdin.close()
    png, dec_err = dec.communicate(timeout=TIMEOUT)
    enc_err = enc.stderr.read()
    enc.stderr.close()
    assert enc.wait(timeout=TIMEOUT) == 0, enc_err.decode()
    assert dec.returncode == 0, dec_err.decode()
    assert "bpp" in enc_err.decode() and "33x17 L" in dec_err.decode()
    decoded = Image.open(io.BytesIO(png))
    assert decoded.format == "PNG" and decoded.size == (33, 17) and decoded.mode == "L"


def test_existing_output_needs_force(env: dict[str, str], coded: dict, tmp_path: Path) -> None:
    out = tmp_path / "x.lsq"
    out.write_bytes(b"keep me")
    refused = lsq(env, "encode", coded["gray"]["src"], "-o", out)
    assert_one_line_error(refused, "exists; use --force")
    assert out.read_bytes() == b"keep me"
    forced = lsq(env, "encode", coded["gray"]["src"], "-o", out, "--force", "--quiet",
                 "--model", "scalar", "--quality", "6")
    assert forced.returncode == 0 and forced.stdout == b"" and forced.stderr == b""
    assert out.read_bytes()[:4] == b"\x89LSQ"
    assert json.loads(lsq(env, "info", "--json", out).stdout)["model"] == "tiny-scalar-q6"
    out.write_bytes(b"keep me")
    refused = lsq(env, "decode", coded["gray"]["lsq"], "-o", out)
    assert_one_line_error(refused, "exists; use --force")
    assert out.read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["x.lsq"]  # no temporary left behind


def test_corrupt_truncated_and_foreign_files(env: dict[str, str], coded: dict,
                                             tmp_path: Path) -> None:
    data = coded["gray"]["lsq"].read_bytes()
    truncated = tmp_path / "t.lsq"
    truncated.write_bytes(data[: len(data) // 2])
    flipped = tmp_path / "f.lsq"
    flipped.write_bytes(data[:-10] + bytes([data[-10] ^ 0x40]) + data[-9:])
    for cmd in ("info", "decode"):
        extra = ["-o", tmp_path / "o.png"] if cmd == "decode" else []
        assert_one_line_error(lsq(env, cmd, truncated, *extra), "truncated")
        assert_one_line_error(lsq(env, cmd, flipped, *extra), "corrupt")
        assert_one_line_error(lsq(env, cmd, coded["gray"]["src"], *extra), "not an lsq file")
    assert not (tmp_path / "o.png").exists()


def test_stream_from_other_weights_is_refused(env: dict[str, str], coded: dict,
                                              tmp_path: Path) -> None:
    """A stream whose weights hash differs (re-checksummed) must not decode."""
    data = bytearray(coded["gray"]["lsq"].read_bytes())
    name_len = data[5]
    data[8 + name_len] ^= 0xFF  # first byte of the weights hash, after the model version
    data[-4:] = struct.pack(">I", zlib.crc32(bytes(data[:-4])))
    bad = tmp_path / "h.lsq"
    bad.write_bytes(bytes(data))
    assert_one_line_error(lsq(env, "decode", bad, "-o", tmp_path / "o.png"), "differ")


def test_decode_to_jpeg_drops_alpha_with_note(env: dict[str, str], coded: dict,
                                              tmp_path: Path) -> None:
    out = tmp_path / "o.jpg"
    result = lsq(env, "decode", coded["rgba"]["lsq"], "-o", out)
    assert result.returncode == 0, result.stderr.decode()
    assert "alpha dropped" in result.stdout.decode()
    assert Image.open(out).format == "JPEG"


def test_user_errors_are_one_line(env: dict[str, str], coded: dict, tmp_path: Path) -> None:
    src = coded["gray"]["src"]
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    cut = tmp_path / "cut.png"
    cut.write_bytes(src.read_bytes()[:200])
    cases = [
        (["encode", tmp_path / "missing.png", "-o", tmp_path / "a.lsq"], "no such file"),
        (["decode", tmp_path / "missing.lsq", "-o", tmp_path / "a.png"], "no such file"),
        (["encode", junk, "-o", tmp_path / "a.lsq"], "not an image"),
        (["encode", cut, "-o", tmp_path / "a.lsq"], "cut.png: cannot read image"),
        (["encode", src, "-o", tmp_path / "a.lsq", "--model", "nope"], "unknown model 'nope'"),
        (["encode", src, "-o", tmp_path / "a.lsq", "--quality", "5.5"],
         "has no quality 5.5; it has 1-5, 6"),
        (["encode", src, "-o", tmp_path / "a.lsq", "--quality", "9"], "not in the range"),
        (["encode", src, src, "-o", "-"], "single input"),
        (["encode", src, "-", "-o", tmp_path / "d"], "stdin"),
        (["encode", src, src, "-o", tmp_path / "d"], "would both be written"),
        (["decode", coded["gray"]["lsq"], "-o", f"{tmp_path}/d/", "--format", "xyz"],
         "unknown output format"),
        (["decode", coded["gray"]["lsq"], coded["rgba"]["lsq"], "-o", tmp_path / "d",
          "--reference", src], "single input"),
        (["decode", coded["gray"]["lsq"], "-o", tmp_path / "a.xyz"], "unknown output format"),
        (["encode", src, "-o", tmp_path / "nodir" / "a.lsq"], "does not exist"),
        (["decode", coded["gray"]["lsq"], "-o", tmp_path / "nodir" / "a.png"], "does not exist"),
        (["decode", coded["gray"]["lsq"], "-o", tmp_path / "a.png", "--max-pixels", "10"],
         "exceeds the decoding limit"),
        (["decode", coded["gray"]["lsq"], "-o", tmp_path / "a.png", "--output-quality", "80"],
         "--output-quality applies to JPEG, WEBP, AVIF outputs, not PNG"),
        (["decode", coded["gray"]["lsq"], "-o", tmp_path / "a.png", "--reference",
          coded["rgba"]["src"]], "reference is 50x40, the stream's image is 33x17"),
    ]
    for args, fragment in cases:
        assert_one_line_error(lsq(env, *args), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.png", "junk.png"]


def test_unknown_model_lists_valid_names(env: dict[str, str], coded: dict,
                                         tmp_path: Path) -> None:
    result = lsq(env, "encode", coded["gray"]["src"], "-o", tmp_path / "a.lsq", "--model", "x")
    assert_one_line_error(result, "tiny-scalar-q1", "tiny-scalar-q6")


def test_stream_for_missing_model(coded: dict, tmp_path: Path) -> None:
    empty = {**os.environ, "LSQ_WEIGHTS_DIR": str(tmp_path)}
    result = lsq(empty, "decode", coded["gray"]["lsq"], "-o", tmp_path / "a.png")
    assert_one_line_error(result, "not installed")


def test_models_command(env: dict[str, str], tmp_path: Path) -> None:
    out = lsq(env, "models").stdout.decode().splitlines()
    assert any(line.startswith("* tiny-scalar-q1") for line in out)
    assert any(line.startswith("  tiny-scalar-q6") for line in out)
    none = lsq({**os.environ, "LSQ_WEIGHTS_DIR": str(tmp_path)}, "models")
    assert none.returncode == 0 and "no models are shipped" in none.stdout.decode()


def test_cuda_without_cuda(env: dict[str, str], coded: dict, tmp_path: Path) -> None:
    env = {**env, "CUDA_VISIBLE_DEVICES": ""}  # no GPU visible, whatever the machine has
    result = lsq(env, "encode", coded["gray"]["src"], "-o", tmp_path / "a.lsq", "--device", "cuda")
    assert_one_line_error(result, "CUDA is not available")
    assert not (tmp_path / "a.lsq").exists()


@pytest.mark.parametrize("args", [["info"], ["decode", "-o", "-"]])
def test_disk_full_is_one_line(env: dict[str, str], coded: dict, args: list[str]) -> None:
    """stdout on a full disk: text (info) and binary (decode) output both fail cleanly."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with open("/dev/full", "wb") as full:
        result = subprocess.run(command(args[0], coded["gray"]["lsq"], *args[1:]),
                                stdout=full, stderr=subprocess.PIPE, env=env, timeout=TIMEOUT)
    assert_one_line_error(result, "No space left on device")


def test_version_help_and_console_script(env: dict[str, str]) -> None:
    for flag in ("--version", "-V"):
        result = lsq(env, flag)
        assert result.returncode == 0 and "lsq, version" in result.stdout.decode()
    script = Path(sys.executable).with_name("lsq")  # pip install (editable or not) puts it here
    helped = subprocess.run([script, "--help"], capture_output=True, env=env, timeout=TIMEOUT)
    assert helped.returncode == 0
    for name in ("encode", "decode", "info", "models"):
        assert name in helped.stdout.decode()


def test_atomic_write_in_process(tmp_path: Path) -> None:
    """write_output: no clobbering without force, replacement with it, no temporaries left."""
    from lsq.cli.coding import OutputExistsError, write_output

    target = tmp_path / "out.bin"
    write_output(str(target), b"one", force=False)
    with pytest.raises(OutputExistsError):
        write_output(str(target), b"two", force=False)
    assert target.read_bytes() == b"one"
    write_output(str(target), b"three", force=True)
    assert target.read_bytes() == b"three"
    (tmp_path / "folder").mkdir()
    with pytest.raises(OSError) as info:
        write_output(str(tmp_path / "folder"), b"x", force=True)
    assert info.value.filename == str(tmp_path / "folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "out.bin"]


def test_batch_encode_and_decode_name_every_failure(env: dict[str, str], coded: dict,
                                                    tmp_path: Path) -> None:
    """Several inputs into a folder: the good ones written, each bad one named, exit 1."""
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    out = tmp_path / "out"
    out.mkdir()
    (out / "rgba.lsq").write_bytes(b"keep me")
    srcs = [coded["gray"]["src"], coded["rgba"]["src"], junk, tmp_path / "missing.png",
            coded["one"]["src"]]
    result = lsq(env, "encode", *srcs, "-o", f"{out}/")
    err = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 4 and lines[-1] == "Error: 3 of 5 files failed", err
    for fragment in ("rgba.lsq exists", "junk.png: not an image", "missing.png: no such file"):
        assert sum(fragment in line for line in lines) == 1, err
    assert (out / "rgba.lsq").read_bytes() == b"keep me"
    assert sorted(p.name for p in out.iterdir()) == ["gray.lsq", "one.lsq", "rgba.lsq"]
    assert result.stdout.decode().count("bpp") == 2

    bad = tmp_path / "cut.lsq"
    bad.write_bytes((out / "gray.lsq").read_bytes()[:20])
    decoded = tmp_path / "decoded"  # made by decode
    result = lsq(env, "decode", out / "gray.lsq", bad, out / "one.lsq", "-o", decoded)
    err = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"Error: {bad}: truncated"), err
    assert lines[1] == "Error: 1 of 3 files failed"
    assert sorted(p.name for p in decoded.iterdir()) == ["gray.png", "one.png"]
    assert Image.open(decoded / "gray.png").size == (33, 17)


def test_help_lists_commands_without_importing_them() -> None:
    """`lsq --help` and `lsq info` load no torch; the help table matches each command."""
    code = ("import sys\nfrom lsq.cli.main import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nprint(sorted(m for m in ('torch', 'compressai', "
            "'lsq.cli.coding', 'lsq.cli.train') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=TIMEOUT)
    assert out.stdout.decode().strip().endswith("[]"), out.stdout.decode()
    for name, (module, attr, help_) in cli_main.COMMANDS.items():
        command = getattr(__import__(module, fromlist=[attr]), attr)
        assert command.get_short_help_str(limit=10**6) == help_, name


def test_info_loads_no_torch(coded: dict) -> None:
    code = ("import sys\nfrom lsq.cli.main import main\ntry:\n"
            f"    main(['info', {str(coded['gray']['lsq'])!r}])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=TIMEOUT)
    assert out.stdout.decode().splitlines()[-1] == "False", out.stderr.decode()


@pytest.mark.parametrize("target", [("broken_cmd", "encode"), ("lsq.cli.coding", "nope")])
def test_broken_command_module_is_an_internal_error(
    target: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "broken_cmd.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("LSQ_DEBUG", raising=False)
    monkeypatch.setitem(cli_main.COMMANDS, "encode", (*target, "broken"))
    result = CliRunner().invoke(cli_main.main, ["encode", "x.png", "-o", "x.lsq"])
    assert result.exit_code == cli_main.INTERNAL_ERROR, result.output
    assert "internal error: command 'encode' cannot be loaded" in result.output
    assert "No such command" not in result.output


def test_a_coder_bug_is_an_internal_error(env: dict[str, str], coded: dict, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug inside the decoder exits 70 with its own name, not as a corrupt stream."""
    def buggy(*args, **kwargs):
        raise IndexError("index 7 is out of bounds")

    monkeypatch.setenv("LSQ_WEIGHTS_DIR", env["LSQ_WEIGHTS_DIR"])
    monkeypatch.delenv("LSQ_DEBUG", raising=False)
    monkeypatch.setattr(ScalarLatentCodec, "decompress", buggy)
    result = CliRunner().invoke(
        cli_main.main, ["decode", str(coded["gray"]["lsq"]), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == cli_main.INTERNAL_ERROR, result.output
    assert "internal error: IndexError: index 7 is out of bounds" in result.output
    assert "corrupt" not in result.output and not (tmp_path / "x.png").exists()
    (tmp_path / "x.png").write_bytes(b"keep me")  # a PNG is written as it decodes: a failure
    result = CliRunner().invoke(  # midway keeps the old file and leaves no temporary
        cli_main.main, ["decode", str(coded["gray"]["lsq"]), "-o", str(tmp_path / "x.png"),
                        "--force"])
    assert result.exit_code == cli_main.INTERNAL_ERROR, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
    assert (tmp_path / "x.png").read_bytes() == b"keep me"


def in_process(env: dict[str, str], *runs: list[str]) -> tuple[list[int], str, list[str]]:
    """Run `lsq` commands one after the other in one fresh interpreter: their exit codes,
    stderr, and which of the heavy modules were imported by the end."""
    code = ("import json, sys\nfrom lsq.cli.main import main\ncodes = []\n"
            f"for args in {[list(map(str, r)) for r in runs]!r}:\n"
            "    try:\n        main(args)\n    except SystemExit as e:\n"
            "        codes.append(e.code or 0)\n"
            f"print(json.dumps([codes, [m for m in {HEAVY!r} if m in sys.modules]]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env,
                         timeout=TIMEOUT)
    codes, loaded = json.loads(out.stdout.decode().splitlines()[-1])
    return codes, out.stderr.decode(), loaded


HEAVY = ("torch", "torch._dynamo", "compressai", "lsq.models.train", "lsq.models.hyperprior")


def test_coding_imports_neither_compiler_nor_training(env: dict[str, str], coded: dict,
                                                      tmp_path: Path) -> None:
    """An encode and a decode load the model and nothing of compiling or training."""
    codes, err, loaded = in_process(
        env, ["encode", coded["gray"]["src"], "-o", tmp_path / "a.lsq", "--quiet"],
        ["decode", tmp_path / "a.lsq", "-o", tmp_path / "a.png", "--quiet"])
    assert codes == [0, 0], err
    assert loaded == ["torch", "lsq.models.hyperprior"]
    assert Image.open(tmp_path / "a.png").size == (33, 17)


@pytest.mark.parametrize("name", ["encode", "decode", "info", "models"])
def test_command_help_loads_no_torch(name: str) -> None:
    codes, err, loaded = in_process(os.environ.copy(), [name, "--help"])
    assert codes == [0] and loaded == [], err


def test_errors_come_before_torch(env: dict[str, str], coded: dict, tmp_path: Path) -> None:
    """Missing input, existing or unwritable output and --max-pixels (read from the header)
    each fail with their one line and exit 1 before torch is even imported."""
    src, stream = coded["gray"]["src"], coded["gray"]["lsq"]
    existing = tmp_path / "exists.lsq"
    existing.write_bytes(b"keep me")
    locked = unwritable_folder(tmp_path)
    cases = [
        (["encode", tmp_path / "missing.png", "-o", tmp_path / "a.lsq"], "no such file"),
        (["decode", tmp_path / "missing.lsq", "-o", tmp_path / "a.png"], "no such file"),
        (["encode", src, "-o", existing], "exists; use --force"),
        (["decode", stream, "-o", existing], "exists; use --force"),
        (["encode", src, "-o", locked / "a.lsq"], f"cannot write in folder {locked}"),
        (["decode", stream, "-o", locked / "a.png"], f"cannot write in folder {locked}"),
        (["decode", stream, "-o", tmp_path / "a.png", "--max-pixels", "560"],
         "image 33x17 exceeds the decoding limit of 560 pixels"),
    ]
    for args, fragment in cases:
        codes, err, loaded = in_process(env, args)
        assert codes == [1] and loaded == [], (args, err)
        assert len(err.strip().splitlines()) == 1 and fragment in err, err
    assert existing.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.lsq"]


def test_missing_cuda_fails_before_the_model_loads(env: dict[str, str], coded: dict,
                                                   tmp_path: Path) -> None:
    env = {**env, "CUDA_VISIBLE_DEVICES": ""}
    for args in (["encode", coded["gray"]["src"], "-o", tmp_path / "a.lsq"],
                 ["decode", coded["gray"]["lsq"], "-o", tmp_path / "a.png"]):
        codes, err, loaded = in_process(env, [*args, "--device", "cuda"])
        assert codes == [1] and "CUDA is not available" in err, err
        assert loaded == ["torch"]  # torch answers the question, the model never loads
    assert list(tmp_path.iterdir()) == []


def test_q_is_the_quality(env: dict[str, str], coded: dict, tmp_path: Path) -> None:
    """`-q 5 IN -o OUT.lsq` encodes IN at quality 5 into the file OUT.lsq, as cwebp would."""
    out = tmp_path / "q5.lsq"
    result = lsq(env, "encode", "-q", "5", coded["gray"]["src"], "-o", out)
    assert result.returncode == 0, result.stderr.decode()
    assert out.is_file() and "at quality 5," in result.stdout.decode()
    info = json.loads(lsq(env, "info", "--json", out).stdout)
    assert info["quality"] == 5.0 and info["model"] == "tiny-scalar-q1"
    quiet = lsq(env, "decode", "-q", out, "-o", tmp_path / "x.png")
    assert_one_line_error(quiet, "No such option '-q'")


SAMPLE = Path(__file__).resolve().parents[1] / "eval" / "sample" / "kodim23.png"


def test_reference_measures_the_jpeg_written(tmp_path: Path) -> None:
    """--reference prints the PSNR of the JPEG file as read back, besides that of the
    decoded pixels, and says it is lossy. The shipped default model on a photograph's
    crop, so that the decode has detail a JPEG can lose."""
    from lsq.eval.metrics import psnr

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("LSQ_WEIGHTS_DIR", None)
    src, stream, png = tmp_path / "crop.png", tmp_path / "crop.lsq", tmp_path / "crop.out.png"
    Image.open(SAMPLE).crop((256, 128, 448, 256)).save(src)
    assert lsq(env, "encode", src, "-o", stream).returncode == 0
    runs = {q: ["decode", stream, "-o", tmp_path / f"{q}.jpg", "--reference", src,
                *(["--output-quality", str(q)] if q != 95 else [])] for q in (95, 20)}
    *results, lossless = lsq_many(env, [*runs.values(), ["decode", stream, "-o", png]])
    assert lossless.returncode == 0, lossless.stderr.decode()
    ref = np.asarray(Image.open(src).convert("RGB"))
    decoded = psnr(ref, np.asarray(Image.open(png).convert("RGB")))
    figures = []
    for q, result in zip(runs, results, strict=True):
        out = result.stdout.decode()
        assert result.returncode == 0, result.stderr.decode()
        assert f"note: JPEG is lossy: written at quality {q}" in out
        written = Image.open(tmp_path / f"{q}.jpg")
        assert written.format == "JPEG"
        figures.append(psnr(ref, np.asarray(written.convert("RGB"))))
        assert (f"PSNR {figures[-1]:.2f} dB (RGB, 8-bit) of {tmp_path / f'{q}.jpg'}; "
                f"{decoded:.2f} dB before JPEG") in out, out
    assert decoded > figures[0] > figures[1] + 1


def test_decoding_does_not_depend_on_threads(env: dict[str, str], coded: dict,
                                             tmp_path: Path) -> None:
    results = lsq_many(env, [["decode", coded["rgba"]["lsq"], "-o", tmp_path / f"{n}.png",
                              "--threads", str(n)] for n in (1, 2)])
    assert all(r.returncode == 0 for r in results), [r.stderr.decode() for r in results]
    one, two = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in (1, 2))
    assert np.array_equal(one, two)


def test_missing_extra_names_the_pip_command(tmp_path: Path) -> None:
    """Without compressai, a training model fails with the one line naming lsq[train]."""
    code = ("import sys\nsys.modules['compressai'] = None\n"
            "from lsq.cli.main import to_click_exception\n"
            "from lsq.models.hyperprior import build_model\n"
            "try:\n    build_model('scalar', N=8, M=24)\nexcept ModuleNotFoundError as e:\n"
            "    error = to_click_exception(e)\n"
            "    print(error.exit_code, error.format_message())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=TIMEOUT)
    assert out.stdout.decode().strip() == (
        '1 compressai is not installed; this needs pip install "lsq[train]"'), out.stderr


def test_command_needing_a_missing_extra_names_it(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A command whose module imports what only lsq[eval] installs: one line, exit 1."""
    (tmp_path / "plotting_cmd.py").write_text("import matplotlib.pyplot\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    monkeypatch.setitem(cli_main.COMMANDS, "plot", ("plotting_cmd", "plot", "Plot."))
    result = CliRunner().invoke(cli_main.main, ["plot", "--help"])
    assert result.exit_code == 1, result.output
    assert result.output == ('Error: matplotlib is not installed; this needs pip install '
                             '"lsq[eval]"\n')


def test_threads_sleep_while_waiting(env: dict[str, str], coded: dict, tmp_path: Path) -> None:
    """torch is loaded with OMP_WAIT_POLICY=PASSIVE unless the user chose a policy, and
    --threads sets its thread count."""
    code = ("import os, sys\nfrom lsq.cli.main import main\ntry:\n"
            f"    main(['encode', {str(coded['gray']['src'])!r}, '-o', sys.argv[1], '--quiet',"
            " *sys.argv[2:]])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "import torch\nprint(os.environ.get('OMP_WAIT_POLICY'), torch.get_num_threads())")
    env = {k: v for k, v in env.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    runs = [(env, []), (env, ["--threads", "1"]), ({**env, "OMP_WAIT_POLICY": "ACTIVE"}, [])]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"{i}.lsq"), *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=run_env)
             for i, (run_env, args) in enumerate(runs)]
    outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    default = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                             capture_output=True, env=env, timeout=TIMEOUT).stdout.decode().strip()
    expected = [f"PASSIVE {default}", "PASSIVE 1", f"ACTIVE {default}"]
    assert [out.decode().strip() for out, _ in outs] == expected, [e for _, e in outs]


@pytest.mark.parametrize("enabled", [True, False])
def test_torch_imports_with_the_collector_paused(enabled: bool) -> None:
    """The coding commands import torch with the garbage collector paused and freeze what
    the import made; the collector is left as it was (a caller may have disabled it)."""
    code = ("import gc, sys\nfrom lsq.cli.coding import prepare_torch\n"
            f"{'' if enabled else 'gc.disable()'}\n"
            "assert 'torch' not in sys.modules and gc.get_freeze_count() == 0\n"
            "prepare_torch('cpu', None)\n"
            "print(gc.isenabled(), gc.get_freeze_count() > 100_000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=TIMEOUT)
    assert out.stdout.decode().split() == [str(enabled), "True"], out.stderr.decode()


def test_the_program_ends_without_the_interpreter_teardown(env: dict[str, str], coded: dict,
                                                           tmp_path: Path) -> None:
    """Run as the program once torch is loaded, `lsq` runs the atexit handlers, flushes what
    it printed and exits with the command's code, but skips the interpreter's teardown (an
    object that only the teardown frees is never freed); without torch, or called with
    arguments, everything ends as usual."""
    code = ("import atexit, os, sys\nclass Torn:\n    def __del__(self, write=os.write):\n"
            "        write(1, b'torn down\\n')\n"
            "atexit.register(lambda: setattr(sys, 'torn', Torn()))\n"
            "atexit.register(print, 'atexit ran')\n"
            "from lsq.cli.main import main\n"
            "if sys.argv[1] == 'embedded':\n    try:\n        main(sys.argv[2:])\n"
            "    except SystemExit as e:\n        print('returned', e.code)\nelse:\n    main()\n")
    runs = {
        "encoded": ["encode", coded["gray"]["src"], "-o", "-"],
        "failed": ["encode", coded["gray"]["src"], "-o", tmp_path / "x.lsq", "--device", "cuda"],
        "torchless": ["info", coded["gray"]["lsq"]],
        "embedded": ["embedded", "decode", coded["gray"]["lsq"], "-o", tmp_path / "x.png"],
    }
    no_cuda = {**env, "CUDA_VISIBLE_DEVICES": ""}  # the error comes once torch is loaded
    out = {name: subprocess.run([sys.executable, "-c", code, *map(str, args)],
                                capture_output=True, env=no_cuda, timeout=TIMEOUT)
           for name, args in runs.items()}
    encoded = out["encoded"]
    assert encoded.returncode == 0, encoded.stderr.decode()
    stream = coded["gray"]["lsq"].read_bytes()
    assert encoded.stdout == stream + b"atexit ran\n"  # the whole stream, then the handler
    assert encoded.stderr.decode().startswith("-: ")  # the report line, flushed
    failed = out["failed"]
    assert failed.returncode == 1 and failed.stdout == b"atexit ran\n"
    assert "CUDA is not available" in failed.stderr.decode()
    torchless = out["torchless"]
    assert torchless.returncode == 0, torchless.stderr.decode()
    assert torchless.stdout.decode().endswith("atexit ran\ntorn down\n")
    embedded = out["embedded"]  # not the program: main raises SystemExit as click's does
    assert embedded.returncode == 0, embedded.stderr.decode()
    assert embedded.stdout.decode().endswith("returned 0\natexit ran\ntorn down\n")



def test_bench_cli_times_the_coding_in_process(env: dict[str, str], coded: dict,
                                               tmp_path: Path) -> None:
    """What bench_cli subtracts: encode and decode of the image with the model loaded,
    through a stream that decodes to the image's size."""
    seconds = bench_cli.in_process(Path(coded["gray"]["src"]), tmp_path, 1, env)
    assert sorted(seconds) == ["decode", "encode"] and min(seconds.values()) > 0
    result = lsq(env, "decode", tmp_path / "in-process.lsq", "-o", tmp_path / "back.png")
    assert result.returncode == 0, result.stderr.decode()
    assert Image.open(tmp_path / "back.png").size == (33, 17)


def test_output_format_imports_other_plugins_only_when_needed() -> None:
    """.png and .jpg are known without importing all of Pillow's plugins; .webp, .tif and
    unknown extensions still find (or refuse) their format."""
    code = ("import sys\nfrom lsq.cli.coding import output_format\n"
            "print(output_format('a.png'), output_format('a.JPG'), "
            "'PIL.TiffImagePlugin' in sys.modules)\n"
            "print(output_format('a.webp'), output_format('a.tif'))\n"
            "try:\n    output_format('a.xyz')\nexcept Exception as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.stdout.splitlines() == [
        "PNG JPEG False", "WEBP TIFF",
        "a.xyz: unknown output format .xyz; use .png, .webp, .jpg..."], out.stderr
