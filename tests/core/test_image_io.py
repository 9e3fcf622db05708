import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from rfdeploy.core.errors import InputError
from rfdeploy.core.image_io import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, iter_image_paths, load_image


def _save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(path: Path, width: int, height: int, mode_byte: int = 0) -> Path:
    """A PNG whose IHDR claims width x height 8-bit pixels but which holds almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, mode_byte, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))
    return path


@pytest.fixture(autouse=True)
def _no_env_limit(monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)


def test_plain_rgb_png_round_trips(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    p = _save(Image.fromarray(rgb), tmp_path / "a.png")
    out = load_image(p)
    assert out.rgb.dtype == np.uint8 and out.rgb.shape == (30, 40, 3)
    np.testing.assert_array_equal(out.rgb, rgb)
    assert out.notes == [] and out.path == p and (out.width, out.height) == (40, 30)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 40 wide x 20 tall, left half red, right half blue; orientation 6 = rotate 90 deg
    # clockwise for display, so the viewer sees 20 wide x 40 tall with red on top.
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)
    a[:, 20:] = (0, 0, 255)
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6
    p = _save(img, tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(p)
    assert out.rgb.shape == (40, 20, 3)
    top, bottom = out.rgb[:15].reshape(-1, 3).mean(0), out.rgb[25:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50, top
    assert bottom[2] > 200 and bottom[0] < 50, bottom
    assert "EXIF orientation 6 applied" in out.notes


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 256, 32768, 65535]], np.uint16)
    p = _save(Image.fromarray(a), tmp_path / "deep.png")
    assert Image.fromarray(a).mode == "I;16"
    with Image.open(p) as im:
        assert im.mode in ("I;16", "I")  # really stored and read as 16-bit
    out = load_image(p)
    assert out.rgb.shape == (1, 4, 3)
    assert out.rgb[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (out.rgb[..., 0] == out.rgb[..., 1]).all() and (out.rgb[..., 1] == out.rgb[..., 2]).all()
    assert any("16-bit" in n for n in out.notes)


def test_16bit_rgb_png_is_scaled(tmp_path):
    px = np.array([[[65535, 0, 256], [32768, 1000, 65280]]], ">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in px)
    ihdr = struct.pack(">IIBBBBB", 2, 1, 16, 2, 0, 0, 0)
    p = tmp_path / "rgb16.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw))
                  + _png_chunk(b"IEND", b""))
    out = load_image(p)
    expected = np.rint(px.astype(np.float64) * 255 / 65535)
    assert np.abs(out.rgb.astype(int) - expected).max() <= 1  # scaled (a clip would give 255s)
    assert "16-bit image scaled to 8 bit" in out.notes


def test_32bit_float_tiff_is_scaled(tmp_path):
    a = np.array([[0.0, 0.5, 1.0]], np.float32)
    p = _save(Image.fromarray(a), tmp_path / "f.tif")
    out = load_image(p)
    assert out.rgb[0, :, 0].tolist() == [0, 128, 255]


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    img = Image.new("P", (4, 2), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    img.putpixel((1, 0), 1)
    p = _save(img, tmp_path / "pal.png", transparency=0)
    out = load_image(p)
    assert out.rgb.shape == (2, 4, 3)
    assert out.rgb[0, 1].tolist() == [255, 0, 0]
    assert out.rgb[0, 0].tolist() == [255, 255, 255]  # transparent index -> white, not black
    assert "transparency composited on white" in out.notes


def test_rgba_half_alpha_is_blended_with_white(tmp_path):
    a = np.zeros((2, 2, 4), np.uint8)
    a[..., 0] = 255
    a[..., 3] = 128
    a[1, 1, 3] = 255
    out = load_image(_save(Image.fromarray(a), tmp_path / "rgba.png"))
    assert out.rgb[1, 1].tolist() == [255, 0, 0]
    g = int(out.rgb[0, 0, 1])
    assert out.rgb[0, 0, 0] == 255 and 120 <= g <= 135 and out.rgb[0, 0, 2] == g


def test_opaque_rgba_has_no_note(tmp_path):
    a = np.full((3, 3, 4), 200, np.uint8)
    a[..., 3] = 255
    out = load_image(_save(Image.fromarray(a), tmp_path / "opaque.png"))
    assert out.rgb[0, 0].tolist() == [200, 200, 200] and out.notes == []


def test_grey_and_la_images(tmp_path):
    out = load_image(_save(Image.new("L", (5, 3), 77), tmp_path / "grey.png"))
    assert out.rgb.shape == (3, 5, 3) and (out.rgb == 77).all()
    out = load_image(_save(Image.new("LA", (5, 3), (0, 0)), tmp_path / "la.png"))
    assert (out.rgb == 255).all()


def test_cmyk_jpeg_converts_to_rgb(tmp_path):
    img = Image.new("CMYK", (32, 16), (255, 0, 0, 0))  # cyan
    img.paste((0, 255, 255, 0), (16, 0, 32, 16))  # red
    p = _save(img, tmp_path / "cmyk.jpg", quality=95)
    with Image.open(p) as im:
        assert im.mode == "CMYK"
    out = load_image(p)
    assert out.rgb.shape == (16, 32, 3)
    cyan, red = out.rgb[8, 4].astype(int), out.rgb[8, 28].astype(int)
    assert cyan[0] < 40 and cyan[1] > 215 and cyan[2] > 215, cyan
    assert red[0] > 215 and red[1] < 40 and red[2] < 40, red
    assert any("CMYK" in n for n in out.notes)


@pytest.mark.parametrize("fmt, ext", [("GIF", ".gif"), ("WEBP", ".webp"), ("PNG", ".png")])
def test_animated_image_uses_first_frame(tmp_path, fmt, ext):
    frames = [Image.new("RGB", (8, 6), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    p = tmp_path / f"anim{ext}"
    kw = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(p, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **kw)
    out = load_image(p)
    assert out.rgb.shape == (6, 8, 3)
    assert out.rgb[3, 4].tolist() == [255, 0, 0]
    assert any("animated image" in n and "3 frames" in n and "first frame used" in n for n in out.notes)


def test_tiny_and_extreme_aspect_images(tmp_path):
    assert load_image(_save(Image.new("RGB", (1, 1), (1, 2, 3)), tmp_path / "1x1.png")).rgb.tolist() == [[[1, 2, 3]]]
    tall = load_image(_save(Image.new("RGB", (10, 10000), (9, 9, 9)), tmp_path / "tall.jpg"))
    assert tall.rgb.shape == (10000, 10, 3)


def test_non_ascii_and_space_path(tmp_path):
    p = _save(Image.new("RGB", (7, 5), (10, 20, 30)), tmp_path / "фото dir" / "ü image été.png")
    out = load_image(p)
    assert out.rgb.shape == (5, 7, 3) and out.path == p
    assert iter_image_paths([str(p.parent)]) == [p]


# --- failures -------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file") as e:
        load_image(tmp_path / "nope.jpg")
    assert "nope.jpg" in str(e.value) and e.value.exit_code == 2


def test_directory(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        load_image(tmp_path)


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty file \(0 bytes\)"):
        load_image(p)


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("these are not pixels\n" * 10)
    with pytest.raises(InputError, match="not an image.*looks like text") as e:
        load_image(p)
    assert "JPEG" in str(e.value)  # the hint lists readable formats


def test_unsupported_formats(tmp_path):
    ico = _save(Image.new("RGB", (16, 16)), tmp_path / "icon.png", format="ICO")
    with pytest.raises(InputError, match="not an image in a supported format"):
        load_image(ico)
    heic = tmp_path / "phone.heic"
    heic.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(range(256)) * 4)
    with pytest.raises(InputError, match="HEIC"):
        load_image(heic)


@pytest.mark.parametrize("fmt, ext", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_truncated_files_are_errors(tmp_path, fmt, ext):
    rgb = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    data = buf.getvalue()
    p = tmp_path / f"cut{ext}"
    p.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(InputError, match="cannot decode image") as e:
        load_image(p)
    assert "truncated or corrupt" in str(e.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    # The header claims 50000 x 50000 (2.5 GP): rejected from the header alone, well under a second.
    p = _png_header_only(tmp_path / "bomb.png", 50000, 50000)
    with pytest.raises(InputError) as e:
        load_image(p)
    msg = str(e.value)
    assert "50000x50000 = 2500000000 pixels" in msg and f"limit of {DEFAULT_MAX_PIXELS} pixels" in msg
    assert MAX_PIXELS_ENV in msg and "max_pixels" in msg


def test_per_call_limit(tmp_path):
    p = _save(Image.new("RGB", (20, 20)), tmp_path / "small.png")
    with pytest.raises(InputError, match="20x20 = 400 pixels, over the limit of 399 pixels"):
        load_image(p, max_pixels=399)
    assert load_image(p, max_pixels=400).rgb.shape == (20, 20, 3)
    assert load_image(p, max_pixels=None).rgb.shape == (20, 20, 3)


def test_env_limit(tmp_path, monkeypatch):
    p = _save(Image.new("RGB", (20, 20)), tmp_path / "small.png")
    monkeypatch.setenv(MAX_PIXELS_ENV, "100")
    with pytest.raises(InputError, match="over the limit of 100 pixels"):
        load_image(p)
    assert load_image(p, max_pixels=1000).rgb.shape == (20, 20, 3)  # the argument wins
    monkeypatch.setenv(MAX_PIXELS_ENV, "none")
    assert load_image(p).rgb.shape == (20, 20, 3)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(InputError, match="not a pixel count"):
        load_image(p)


def test_images_above_pillows_default_limit_are_not_refused_by_pillow(tmp_path):
    # 20000 x 10000 = 200 MP: Pillow's own default guard (89 MP, error above 179 MP) would refuse
    # it; ours admits it. The file holds almost no data, so decoding must fail as truncated, not
    # as a decompression bomb, and Pillow's global setting must be left as it was.
    before = Image.MAX_IMAGE_PIXELS
    assert 20000 * 10000 > 2 * before
    p = _png_header_only(tmp_path / "big.png", 20000, 10000)
    with pytest.raises(InputError, match="cannot decode image") as e:
        load_image(p)
    assert "DecompressionBomb" not in str(e.value) and "over the limit" not in str(e.value)
    assert Image.MAX_IMAGE_PIXELS == before
    with pytest.raises(InputError, match="over the limit of 100000000 pixels"):
        load_image(p, max_pixels=100_000_000)


def test_bad_max_pixels_argument(tmp_path):
    p = _save(Image.new("RGB", (2, 2)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(p, max_pixels=0)


# --- iter_image_paths ----------------------------------------------------------------------------


def _touch_image(path: Path) -> Path:
    return _save(Image.new("RGB", (2, 2)), path, format="PNG")


def test_iter_directory_sorted_filtered_case_insensitive(tmp_path):
    d = tmp_path / "in"
    b = _touch_image(d / "b.PNG")
    a = _touch_image(d / "a.jpg")
    c = _touch_image(d / "c.JpEg")
    (d / "notes.txt").write_text("x")
    _touch_image(d / "._a.jpg")  # macOS companion file
    _touch_image(d / "sub" / "deep.png")
    assert iter_image_paths([d]) == [a, b, c]
    assert iter_image_paths([d], recursive=True) == [a, b, c, d / "sub" / "deep.png"]


def test_iter_keeps_input_order_and_dedupes(tmp_path):
    a = _touch_image(tmp_path / "a.png")
    b = _touch_image(tmp_path / "b.png")
    got = iter_image_paths([str(b), str(tmp_path), str(tmp_path / "." / "a.png"), str(tmp_path / "*.png")])
    assert got == [b, a]


def test_iter_explicit_file_any_extension(tmp_path):
    p = _touch_image(tmp_path / "picture.data")
    assert iter_image_paths([p]) == [p]


def test_iter_glob(tmp_path):
    x = _touch_image(tmp_path / "x1.png")
    y = _touch_image(tmp_path / "x2.jpg")
    (tmp_path / "x3.txt").write_text("no")
    assert iter_image_paths([str(tmp_path / "x*")]) == [x, y]
    deep = _touch_image(tmp_path / "s" / "t" / "x9.png")
    assert deep in iter_image_paths([str(tmp_path / "**" / "*.png")])


def test_iter_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(InputError, match="directory contains no images"):
        iter_image_paths([empty])
    with pytest.raises(InputError, match="pattern matches no image files"):
        iter_image_paths([str(tmp_path / "*.jpg")])
    with pytest.raises(InputError, match="no such file or directory"):
        iter_image_paths([str(tmp_path / "missing.jpg")])
    link = tmp_path / "dangling.jpg"
    link.symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(InputError, match="broken link"):
        iter_image_paths([link])


def test_shared_dev_photos_load_at_their_annotated_size():
    from shared_data import SHARED_DATA

    ann = (SHARED_DATA or Path("/nonexistent")) / "realfaces/dev/annotations.json"
    if not ann.exists():
        pytest.skip("shared dev photos (../shared/data/realfaces/dev) are not on this machine")
    import json

    images = json.loads(ann.read_text())["images"]
    paths = iter_image_paths([ann.parent])
    assert len(paths) == len(images)
    for rec in images:
        out = load_image(ann.parent / rec["file"])
        assert out.rgb.shape == (rec["height"], rec["width"], 3), rec["file"]
