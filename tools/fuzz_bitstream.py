"""Fuzz the `.lsq` parser and the full decoder; exit status 1 if anything misbehaved.

    python -m lsq.tools.fuzz_bitstream [--cases 100000] [--decode-cases 2000] [--seed 0]

Phase 1 mutates valid streams of format versions 3 and 2 (bit flips, overwrites, inserts,
deletions, truncations, extensions, splices, big integers; half of them with the CRC
recomputed so mutations reach the structural checks) and runs `unpack` in-process: every
case must return or raise BitstreamError within --hang seconds. Phase 2, when a model is shipped (or
LSQ_WEIGHTS_DIR names one), encodes small real images and runs `decode_image` on mutated
copies (half with garbage inside one section of a valid container, the rest mutated
anywhere and mostly CRC-fixed) so the entropy decoder and networks see garbage, in a child
process so that a crash (segfault) or hang is caught and counted instead of ending the run.
Counts: ok, refused (BitstreamError or ModelMismatchError), wrong-type (any other
exception), hang, crash.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import struct
import time
import warnings
import zlib
from collections import Counter
from dataclasses import replace

import click

from lsq.codec.bitstream import FLAG_ALPHA, FLAG_GRAY, BitstreamError, Header, pack, unpack

BIG = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0xFFFFFFFF)


def synthetic_seeds() -> list[bytes]:
    """Valid streams exercising every header field: flags, grids, shapes, empty sections, both
    format versions."""
    seeds = []
    for width, height, tile, flags, version in [
        (1, 1, 64, 0, 3),
        (100, 70, 64, FLAG_ALPHA | FLAG_GRAY, 3),
        (768, 512, 1024, 0, 3),
        (300, 5, 128, FLAG_ALPHA, 2),
        (100, 70, 64, FLAG_ALPHA | FLAG_GRAY, 2),
    ]:
        cols, rows = -(-width // tile), -(-height // tile)
        header = Header(
            model="leech-q3", weights_hash=bytes(range(8)), width=width, height=height,
            mode="RGBA" if flags & FLAG_ALPHA else "RGB", flags=flags, quality=3, tile=tile,
            latent_shapes=((1, 2),) * (cols * rows), version=version,
            model_version=7 if version >= 3 else 0,
        )
        n = 2 * cols * rows + (1 if flags & FLAG_ALPHA else 0)
        seeds.append(pack(header, [bytes([i]) * (i % 5) for i in range(n)]))
    return seeds


def fix_crc(data: bytes) -> bytes:
    """Recompute the trailing CRC so that a mutation is not caught by the checksum alone."""
    if len(data) < 4:
        return data
    return data[:-4] + struct.pack(">I", zlib.crc32(data[:-4]))


def mutate(data: bytes, rng: random.Random, seeds: list[bytes]) -> bytes:
    """Apply 1 to 4 random mutations."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(buf) + 1)
        kind = rng.randrange(8)
        if kind == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif kind == 2:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif kind == 3:
            del buf[pos : pos + rng.randint(1, 16)]
        elif kind == 4:
            del buf[pos:]
        elif kind == 5:
            buf += rng.randbytes(rng.randint(1, 64))
        elif kind == 6:
            other = rng.choice(seeds)
            cut = rng.randrange(len(other) + 1)
            buf[pos:] = other[cut:]
        else:
            size = rng.choice((1, 2, 4))
            value = rng.choice(BIG) & ((1 << (8 * size)) - 1)
            buf[pos : pos + size] = value.to_bytes(size, "big")
    return bytes(buf)


def fuzz_unpack(seeds: list[bytes], cases: int, seed: int, hang_s: float) -> Counter:
    """In-process: unpack must return or raise BitstreamError, quickly."""
    rng = random.Random(seed)
    counts: Counter = Counter()
    for i in range(cases):
        data = mutate(rng.choice(seeds), rng, seeds)
        if i % 2:
            data = fix_crc(data)
        start = time.perf_counter()
        try:
            header, sections = unpack(data)
            counts["ok"] += 1
            if pack(header, sections) != data:
                counts["not-canonical"] += 1
        except BitstreamError:
            counts["refused"] += 1
        except Exception as e:  # counting unexpected types is the point
            counts["wrong-type"] += 1
            counts[f"wrong-type {type(e).__name__}: {e}"[:120]] += 1
        if time.perf_counter() - start > hang_s:
            counts["hang"] += 1
    return counts


def _worker(conn) -> None:
    """Child process: encode seed images or decode fuzz cases, reporting outcomes."""
    import numpy as np
    from PIL import Image

    from lsq import image_codec
    from lsq.models import registry

    while True:
        message = conn.recv()
        if message is None:
            return
        kind, payload = message
        if kind == "encode":
            mode, size, tile = payload
            rng = np.random.default_rng(0)
            arr = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
            img = Image.fromarray(arr, mode)
            conn.send(image_codec.encode_image_report(img, tile=tile)[0])
            continue
        try:
            image_codec.decode_image(payload)
            conn.send("ok")
        except (BitstreamError, registry.ModelMismatchError):
            conn.send("refused")
        except Exception as e:  # the parent counts it
            conn.send(f"wrong-type {type(e).__name__}: {e}"[:120])


class _Child:
    """A decode worker that is restarted after a crash or a hang."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self._start()

    def _start(self) -> None:
        self.conn, child_conn = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child_conn,), daemon=True)
        self.proc.start()
        child_conn.close()

    def ask(self, message, timeout: float) -> object:
        """The worker's answer, or 'hang' / 'crash' (after which it is restarted)."""
        self.conn.send(message)
        try:
            if self.conn.poll(timeout):
                return self.conn.recv()
            outcome = "hang"
        except (EOFError, ConnectionResetError):
            outcome = "crash"
        self.proc.kill()
        self.proc.join()
        self._start()
        return outcome

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(10)


def fuzz_decode(cases: int, seed: int, hang_s: float) -> tuple[Counter, list[bytes]]:
    """Mutated real streams through decode_image in a child process."""
    child = _Child()
    counts: Counter = Counter()
    try:
        real = []
        for spec in (("RGB", (96, 64), 64), ("RGBA", (20, 12), 64)):
            stream = child.ask(("encode", spec), 600)
            if not isinstance(stream, bytes):
                raise click.ClickException(f"cannot encode a seed image: {stream}")
            real.append(stream)
        header, sections = unpack(real[0])  # and the version-2 decoder on the same latents
        real.append(pack(replace(header, version=2, model_version=0), sections))
        for stream in real:
            if child.ask(("decode", stream), 600) != "ok":
                raise click.ClickException("an unmutated seed stream does not decode")
        rng = random.Random(seed)
        for i in range(cases):
            if i % 2:  # garbage inside one coded section of a valid container
                header, sections = unpack(rng.choice(real))
                k = rng.randrange(len(sections))
                sections[k] = mutate(sections[k], rng, sections)
                data = pack(header, sections)
            else:
                data = mutate(rng.choice(real), rng, real)
                data = fix_crc(data) if i % 10 else data
            outcome = child.ask(("decode", data), hang_s)
            counts[outcome if outcome in ("ok", "refused", "hang", "crash") else "wrong-type"] += 1
            if outcome not in ("ok", "refused", "hang", "crash"):
                counts[str(outcome)] += 1
    finally:
        child.close()
    return counts, real


def _report(title: str, counts: Counter, elapsed: float) -> None:
    click.echo(f"{title} ({elapsed:.1f} s):")
    for key in ("ok", "refused", "wrong-type", "hang", "crash", "not-canonical"):
        click.echo(f"  {key:14} {counts.get(key, 0)}")
    for key, n in counts.items():
        if key.startswith("wrong-type "):
            click.echo(f"  {n} x {key}")


@click.command()
@click.option("--cases", default=100_000, show_default=True, help="Parser fuzz cases.")
@click.option("--decode-cases", default=2_000, show_default=True, help="Full decode cases.")
@click.option("--seed", default=0, show_default=True)
@click.option("--hang", "hang_s", default=10.0, show_default=True, help="Seconds = a hang.")
def main(cases: int, decode_cases: int, seed: int, hang_s: float) -> None:
    """Fuzz unpack() and decode_image(); exit 1 on any crash, hang or wrong error type."""
    from lsq.models import registry

    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")
    bad = 0
    seeds = synthetic_seeds()
    real: list[bytes] = []
    if decode_cases and registry.default_name():
        start = time.perf_counter()
        counts, real = fuzz_decode(decode_cases, seed, hang_s)
        _report(f"decode_image, {decode_cases} cases, model {registry.default_name()}",
                counts, time.perf_counter() - start)
        bad += counts["wrong-type"] + counts["hang"] + counts["crash"]
    elif decode_cases:
        click.echo("decode_image: skipped, no model is shipped (set LSQ_WEIGHTS_DIR)")
    start = time.perf_counter()
    counts = fuzz_unpack(seeds + real, cases, seed, hang_s)
    _report(f"unpack, {cases} cases", counts, time.perf_counter() - start)
    bad += counts["wrong-type"] + counts["hang"] + counts["not-canonical"]
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
