"""Random bytes and damaged real images into the decoder and the CLI: the only outcomes are a
decoded image or InputError (CLI: exit 0, 2 or 7, never a traceback)."""

from __future__ import annotations

import io
import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from robust_helpers import ASTRONAUT, HOPPER, run_cli, tiny_args

from rfdeploy.core.errors import InputError
from rfdeploy.core.image_io import load_image


def _encoded(fmt: str, size=(40, 32), mode="RGB", **kw) -> bytes:
    from PIL import Image

    with Image.open(HOPPER) as im:
        small = im.convert(mode).resize(size)
    buf = io.BytesIO()
    small.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def seeds() -> dict[str, bytes]:
    return {
        "hopper.jpg": HOPPER.read_bytes(),
        "astronaut.jpg": ASTRONAUT.read_bytes(),
        "small.jpg": _encoded("JPEG", progressive=True),
        "small.png": _encoded("PNG"),
        "rgba.png": _encoded("PNG", mode="RGBA"),
        "small.gif": _encoded("GIF"),
        "small.bmp": _encoded("BMP"),
        "small.tif": _encoded("TIFF"),
        "deflate.tif": _encoded("TIFF", compression="tiff_deflate"),
        "small.webp": _encoded("WEBP"),
        "small.ppm": _encoded("PPM"),
    }


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:  # bit flips anywhere
        for i in rng.integers(0, len(b), rng.integers(1, 24)):
            b[i] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # truncation
        b = b[: int(rng.integers(1, len(b)))]
    elif kind == 2:  # bytes overwritten in the header, where the parsers live
        for i in rng.integers(0, min(len(b), 512), rng.integers(1, 8)):
            b[i] = int(rng.integers(256))
    else:  # a chunk duplicated or dropped
        i, j = sorted(rng.integers(0, len(b), 2).tolist())
        b = b[:i] + b[j:] if rng.integers(2) else b[:j] + b[i:j] + b[j:]
    return bytes(b)


# A damaged header may claim any size up to the default limit (268 MP); a lower limit keeps each
# case cheap, and the limit check itself is one of the paths under test.
FUZZ_MAX_PIXELS = 2_000_000


def check_decoder(path: Path) -> str:
    """'ok' or 'error'; anything else fails the test with the exception."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about odd metadata; not what is tested
            img = load_image(path, max_pixels=FUZZ_MAX_PIXELS)
    except InputError as e:
        first = str(e).split("\n")[0]
        assert str(path) in first and first.strip(), str(e)
        return "error"
    assert img.rgb.ndim == 3 and img.rgb.shape[2] == 3 and img.rgb.dtype == np.uint8
    assert img.width > 0 and img.height > 0
    return "ok"


@pytest.mark.parametrize("seed", range(4))
def test_mutated_images_decode_or_raise_input_error(seeds, tmp_path, seed):
    rng = np.random.default_rng(seed)
    names = sorted(seeds)
    outcomes = []
    for i in range(1000):
        name = names[int(rng.integers(len(names)))]
        p = tmp_path / f"m{i}{Path(name).suffix}"
        p.write_bytes(mutate(seeds[name], rng))
        outcomes.append(check_decoder(p))
    # both outcomes occur: the mutations neither always break nor never break the files
    assert {"ok", "error"} <= set(outcomes)


MAGIC = [b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
         b"P6\n", b"P5 4 4 255\n"]


@given(st.sampled_from(MAGIC), st.binary(min_size=0, max_size=400))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_bytes_after_a_format_signature(tmp_path, magic, tail):
    p = tmp_path / "fuzz.img"
    p.write_bytes(magic + tail)
    if not (magic + tail):
        with pytest.raises(InputError, match="empty file"):
            load_image(p)
        return
    check_decoder(p)


def _tiff(ifds: list[list[tuple[int, int, int, bytes]]], tail: bytes) -> bytes:
    """A little-endian TIFF with the given IFDs (tag, type, count, 4-byte value), chained."""
    out, offset = [], 8
    for k, entries in enumerate(ifds):
        size = 2 + 12 * len(entries) + 4
        nxt = offset + size if k + 1 < len(ifds) else 0
        out.append(struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", t, ty, n) + v for t, ty, n, v in sorted(entries))
                   + struct.pack("<I", nxt))
        offset += size
    return b"II*\x00" + struct.pack("<I", 8) + b"".join(out) + tail


def _short(v: int) -> bytes:
    return struct.pack("<HH", v, 0)


def _long(v: int) -> bytes:
    return struct.pack("<I", v)


def _grey_4x4(strip_offset_entry) -> list:
    return [(256, 3, 1, _short(4)), (257, 3, 1, _short(4)), (258, 3, 1, _short(8)), (262, 3, 1, _short(1)),
            strip_offset_entry, (277, 3, 1, _short(1)), (278, 3, 1, _short(4)), (279, 4, 1, _long(16))]


def test_corrupt_tiff_headers_are_input_errors(tmp_path):
    """Found by fuzzing: Pillow raises TypeError for these TIFF structures."""
    pixels = bytes(range(16))
    one_ifd = 8 + 2 + 12 * 8 + 4
    # StripOffsets stored as a RATIONAL
    rational = _tiff([_grey_4x4((273, 5, 1, _long(one_ifd)))], struct.pack("<II", one_ifd + 8, 1) + pixels)
    # a good first frame followed by a frame without an image width
    second = 2 + 12 * 2 + 4
    two_frames = _tiff([_grey_4x4((273, 4, 1, _long(one_ifd + second))), [(257, 3, 1, _short(4)), (262, 3, 1, _short(1))]],
                       pixels)
    for name, data in [("rational.tif", rational), ("frames.tif", two_frames)]:
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(InputError, match="cannot decode image"):
            load_image(p)


def test_cli_on_damaged_images(tiny_ckpt, seeds, tmp_path):
    rng = np.random.default_rng(7)
    d = tmp_path / "damaged"
    d.mkdir()
    from PIL import Image

    for i, name in enumerate(["hopper.jpg", "astronaut.jpg", "small.png", "small.gif", "small.tif", "deflate.tif", "small.webp"]):
        data = seeds[name]
        if name in ("hopper.jpg", "astronaut.jpg"):  # keep the model's work small: re-encode at a low size first
            with Image.open(io.BytesIO(data)) as im:
                buf = io.BytesIO()
                im.convert("RGB").resize((64, 72)).save(buf, "JPEG")
                data = buf.getvalue()
        (d / f"{i}_{name}").write_bytes(mutate(data, rng))
    (d / "9_random.png").write_bytes(rng.bytes(300))
    out = tmp_path / "res.jsonl"
    res = run_cli("infer", d, *tiny_args(tiny_ckpt), "--out", out, "-q")
    assert res.exit_code in (0, 2, 7), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == len(list(d.iterdir()))
    for r in recs:
        assert ("faces" in r) != ("error" in r)
        if "error" in r:
            assert r["error_type"] == "InputError" and r["exit_code"] == 2
    assert any("error" in r for r in recs)
    # one damaged file alone: exit 2 or success, one line
    bad = d / "9_random.png"
    res = run_cli("infer", bad, *tiny_args(tiny_ckpt), "-q")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert [line for line in res.stderr.splitlines() if line.startswith("error:")] == [
        line for line in res.stderr.splitlines() if line.strip() and not line.startswith("  hint:")]


def test_decoder_warnings_become_notes_not_stderr(tmp_path, tiny_ckpt):
    one_ifd = 8 + 2 + 12 * 9 + 4
    entries = _grey_4x4((273, 4, 1, _long(one_ifd))) + [(296, 3, 2, _short(2))]  # ResolutionUnit with 2 values
    p = tmp_path / "odd_tags.tif"
    p.write_bytes(_tiff([entries], bytes(range(16))))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning escaping load_image would raise here
        img = load_image(p)
    assert img.rgb.shape == (4, 4, 3)
    assert any(n.startswith("decoder warning: ") and "296" in n for n in img.notes), img.notes
    res = run_cli("infer", p, *tiny_args(tiny_ckpt), "-q")
    assert res.exit_code == 0 and res.stderr == "", res.output
    assert any("296" in n for n in json.loads(res.stdout)["notes"])
