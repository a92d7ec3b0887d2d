"""Training-set shards: the original image files packed into a few files of bounded size.

The GPU machine takes its inputs in pieces of at most about 60 MB (docs/design.md section 8),
so the training JPEGs travel as shards. A shard keeps each file's original bytes (no
re-encoding, so 145 MB of JPEGs stay about 145 MB) behind a small JSON header:

    b"LSQSHRD1" | uint64 little-endian header length | JSON header | file bytes...

The header lists, per file, its name (``<source folder name>/<relative path>``), offset
(from the end of the header), size and split. Files are taken in sorted-name order and
every ``val_every``-th one is held out for validation, so the split is the same on every
machine. Only this module, numpy and Pillow are needed to read shards back.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from lsq.fileio import write_atomic

MAGIC = b"LSQSHRD1"
SHARD_SUFFIX = ".lsqshard"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
DEFAULT_MAX_BYTES = 60_000_000
DEFAULT_VAL_EVERY = 50


def list_image_files(src_dirs: Iterable[str | os.PathLike]) -> list[tuple[str, Path]]:
    """(name, path) of every image under the folders, sorted by name for a fixed order."""
    found: dict[str, Path] = {}
    for src in src_dirs:
        root = Path(src)
        if not root.is_dir():
            raise FileNotFoundError(f"not a folder: {root}")
        for path in root.rglob("*"):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                name = f"{root.name}/{path.relative_to(root).as_posix()}"
                if name in found:
                    raise ValueError(f"two source folders give the same name {name!r}")
                found[name] = path
    return sorted(found.items())


def split_of(index: int, val_every: int) -> str:
    """Every ``val_every``-th file (in sorted order) is validation, the rest training."""
    return "val" if val_every > 0 and index % val_every == 0 else "train"


def _write_shard(path: Path, entries: list[dict], blobs: list[bytes]) -> None:
    header = json.dumps({"files": entries}, separators=(",", ":")).encode()
    write_atomic(path, b"".join([MAGIC, struct.pack("<Q", len(header)), header, *blobs]))


def pack_shards(
    src_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    max_bytes: float = DEFAULT_MAX_BYTES,
    val_every: int = DEFAULT_VAL_EVERY,
) -> list[Path]:
    """Pack every image under ``src_dirs`` into shards of at most ``max_bytes`` each.

    Returns the shard paths. Existing shards in ``out_dir`` are replaced.
    """
    max_bytes = int(max_bytes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"*{SHARD_SUFFIX}"):
        old.unlink()
    files = list_image_files(src_dirs)
    if not files:
        raise FileNotFoundError(f"no images under {list(map(str, src_dirs))}")

    shards: list[Path] = []
    entries: list[dict] = []
    blobs: list[bytes] = []

    def flush() -> None:
        path = out / f"shard-{len(shards):04d}{SHARD_SUFFIX}"
        _write_shard(path, entries, blobs)
        shards.append(path)
        entries.clear()
        blobs.clear()

    def shard_size(extra: dict, extra_bytes: int) -> int:
        header = json.dumps({"files": [*entries, extra]}, separators=(",", ":")).encode()
        return len(MAGIC) + 8 + len(header) + sum(map(len, blobs)) + extra_bytes

    for index, (name, path) in enumerate(files):
        blob = path.read_bytes()
        offset = sum(map(len, blobs))
        split = split_of(index, val_every)
        entry = {"name": name, "offset": offset, "size": len(blob), "split": split}
        if shard_size(entry, len(blob)) > max_bytes:
            if not entries:
                raise ValueError(f"{path} alone does not fit in a shard of {max_bytes} bytes")
            flush()
            entry["offset"] = 0
        entries.append(entry)
        blobs.append(blob)
    flush()
    return shards


def read_shard(path: str | os.PathLike) -> list[tuple[dict, bytes]]:
    """(header entry, original file bytes) for every file in one shard."""
    data = Path(path).read_bytes()
    if data[: len(MAGIC)] != MAGIC:
        raise ValueError(f"{path} is not an lsq shard")
    (header_len,) = struct.unpack("<Q", data[len(MAGIC) : len(MAGIC) + 8])
    start = len(MAGIC) + 8
    header = json.loads(data[start : start + header_len])
    body = start + header_len
    files = []
    for entry in header["files"]:
        begin = body + entry["offset"]
        blob = data[begin : begin + entry["size"]]
        if len(blob) != entry["size"]:
            raise ValueError(f"{path} is truncated at {entry['name']}")
        files.append((entry, blob))
    return files


def shard_paths(shard_dir: str | os.PathLike) -> list[Path]:
    """The shards of a folder, in order."""
    paths = sorted(Path(shard_dir).glob(f"*{SHARD_SUFFIX}"))
    if not paths:
        raise FileNotFoundError(f"no *{SHARD_SUFFIX} files in {shard_dir}")
    return paths


def iter_shard_files(shard_dir: str | os.PathLike, split: str | None = None):
    """Yield (name, bytes) of the files in all shards, optionally only one split."""
    for path in shard_paths(shard_dir):
        for entry, blob in read_shard(path):
            if split is None or entry["split"] == split:
                yield entry["name"], blob


def unpack_shards(shard_dir: str | os.PathLike, out_dir: str | os.PathLike) -> int:
    """Write every file of the shards back under ``out_dir``; returns the file count."""
    count = 0
    for name, blob in iter_shard_files(shard_dir):
        target = Path(out_dir) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
        count += 1
    return count


def decode_image(blob: bytes) -> np.ndarray:
    """HxWx3 uint8 RGB array of an encoded image."""
    with Image.open(BytesIO(blob)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _decode_all(blobs: list[bytes]) -> list[np.ndarray]:
    # Pillow releases the GIL while decoding, so threads give a real speed-up.
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        return list(pool.map(decode_image, blobs))


def load_images(shard_dir: str | os.PathLike, split: str | None = "train") -> list[np.ndarray]:
    """Decoded RGB images (HxWx3 uint8) of one split ("train", "val" or None for all)."""
    return _decode_all([blob for _, blob in iter_shard_files(shard_dir, split)])


def load_folder_images(
    src_dirs: Sequence[str | os.PathLike],
    split: str | None = "train",
    val_every: int = DEFAULT_VAL_EVERY,
) -> list[np.ndarray]:
    """Like :func:`load_images`, straight from image folders, with the same split rule."""
    files = list_image_files(src_dirs)
    chosen = [
        path for i, (_, path) in enumerate(files) if split in (None, split_of(i, val_every))
    ]
    return _decode_all([p.read_bytes() for p in chosen])


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m lsq.models.shards pack SRC... -o DIR`` / ``unpack SHARDS -o DIR``."""
    parser = argparse.ArgumentParser(prog="python -m lsq.models.shards", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    pack = sub.add_parser("pack", help="pack image folders into shards")
    pack.add_argument("src", nargs="+")
    pack.add_argument("-o", "--out", required=True)
    pack.add_argument("--max-bytes", type=float, default=DEFAULT_MAX_BYTES)
    pack.add_argument("--val-every", type=int, default=DEFAULT_VAL_EVERY)
    unpack = sub.add_parser("unpack", help="write the shards' files back to a folder")
    unpack.add_argument("shard_dir")
    unpack.add_argument("-o", "--out", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "pack":
        paths = pack_shards(args.src, args.out, args.max_bytes, args.val_every)
        for p in paths:
            print(f"{p}  {p.stat().st_size / 1e6:.1f} MB")
    else:
        print(f"{unpack_shards(args.shard_dir, args.out)} files written to {args.out}")


if __name__ == "__main__":
    main()
