"""Profile parsing, validation against declared inputs, and runtime profile selection (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rfdeploy.core.errors import EngineMismatchError, InputError
from rfdeploy.engines.profiles import (
    PRESETS,
    Profile,
    ShapeRange,
    parse_shape,
    parse_shape_arg,
    preset_spec,
    resolve_profile,
    resolve_profiles,
    select_profile,
    spec_from_shape_args,
    specs_from_cli,
)

DET = {"input": (-1, 3, -1, -1)}
RANKER = {"image": (-1, 3, -1, -1), "boxes": (-1, 3840, 5)}
RANKER_DYN_N = {"image": (-1, 3, -1, -1), "boxes": (-1, -1, 5)}


def test_parse_shapes():
    assert parse_shape("1x3x480x640") == (1, 3, 480, 640)
    assert parse_shape_arg("input:1x3x480x640") == ("input", (1, 3, 480, 640))
    assert parse_shape_arg("2x3x64x64") == (None, (2, 3, 64, 64))
    # Names may contain ':' (e.g. TensorFlow-style names); the last one splits.
    assert parse_shape_arg("scope:image:1x3x8x8") == ("scope:image", (1, 3, 8, 8))
    for bad in ("x3", "1x3x-1x640", "1x3x0x640", "input:", ":1x3", "1,3,480,640", ""):
        with pytest.raises(InputError):
            parse_shape_arg(bad)


@given(st.lists(st.integers(1, 4096), min_size=1, max_size=6))
def test_parse_shape_roundtrip(dims):
    assert parse_shape("x".join(map(str, dims))) == tuple(dims)


def test_presets():
    assert preset_spec("vga").image == ShapeRange.fixed((1, 3, 480, 640))
    assert preset_spec("1080p").image.opt == (1, 3, 1088, 1920)
    t = preset_spec("tile1024").image
    assert (t.min[0], t.opt[0], t.max[0]) == (1, 4, 8) and t.opt[1:] == (3, 1024, 1024)
    # Every preset's spatial size is a multiple of 32 (the contract's padding).
    for r in PRESETS.values():
        assert all(v % 32 == 0 for v in (*r.min[2:], *r.opt[2:], *r.max[2:]))
    with pytest.raises(InputError, match="(?s)unknown profile preset 'qvga'.*vga"):
        preset_spec("qvga")


def test_shape_args_validation():
    s = spec_from_shape_args(["1x3x32x32"], ["1x3x64x64"], ["2x3x128x128"])
    assert s.image == ShapeRange((1, 3, 32, 32), (1, 3, 64, 64), (2, 3, 128, 128))
    assert spec_from_shape_args(opt_shapes=["1x3x64x64"]).image == ShapeRange.fixed((1, 3, 64, 64))
    assert spec_from_shape_args() is None
    with pytest.raises(InputError, match="min <= opt <= max"):
        spec_from_shape_args(["1x3x64x64"], ["1x3x32x32"], ["1x3x128x128"])
    with pytest.raises(InputError, match="without --opt"):
        spec_from_shape_args(["1x3x64x64"], [], ["1x3x128x128"])
    with pytest.raises(InputError, match="different ranks"):
        spec_from_shape_args(["1x3x64x64"], ["1x3x64"], ["1x3x128x128"])
    with pytest.raises(InputError, match="given twice"):
        spec_from_shape_args([], ["1x3x64x64", "1x3x32x32"], [])


def test_several_profiles_from_cli():
    specs = specs_from_cli(["1x3x32x32"], ["1x3x64x64"], ["1x3x128x128"], presets=["vga", "tile1024"])
    assert [s.preset for s in specs] == [None, "vga", "tile1024"]
    profiles = resolve_profiles(specs, DET)
    assert [p.shapes["input"].opt for p in profiles] == [(1, 3, 64, 64), (1, 3, 480, 640), (4, 3, 1024, 1024)]


def test_a_named_image_shape_with_presets_is_its_own_profile():
    # `--min-shape image:... --profile vga` is an explicit profile beside the preset, as the same
    # shapes given unnamed are; presets may come as any iterable
    specs = specs_from_cli(["image:1x3x64x64"], ["image:4x3x1024x1024"], ["image:8x3x2048x2048"],
                           presets=iter(["vga"]))
    assert [s.preset for s in specs] == [None, "vga"]
    profiles = resolve_profiles(specs, {"image": (-1, 3, -1, -1)})
    assert [p.shapes["image"].opt for p in profiles] == [(4, 3, 1024, 1024), (1, 3, 480, 640)]
    # shapes of other inputs only still join every preset
    only_boxes = specs_from_cli(["boxes:1x3840x5"], ["boxes:1x3840x5"], ["boxes:1x3840x5"], presets=["vga"])
    assert len(only_boxes) == 1 and "boxes" in only_boxes[0].named


def test_resolution_errors():
    with pytest.raises(InputError, match="rank 3 but the model's input has rank 4"):
        resolve_profile(spec_from_shape_args(opt_shapes=["3x64x64"]), DET)
    with pytest.raises(InputError, match="dimension 1 is fixed to 3"):
        resolve_profile(spec_from_shape_args(opt_shapes=["1x4x64x64"]), DET)
    with pytest.raises(InputError, match="unknown input"):
        resolve_profile(spec_from_shape_args(opt_shapes=["image:1x3x64x64"]), DET)
    with pytest.raises(InputError, match="no profile was given"):
        resolve_profiles([], DET)
    # A static network needs no profile: its one fixed shape is the profile.
    (p,) = resolve_profiles([], {"x": (1, 3, 8, 8)})
    assert p.shapes["x"] == ShapeRange.fixed((1, 3, 8, 8))


def test_ranker_other_inputs_follow_image_batch():
    p = resolve_profile(preset_spec("tile1024"), RANKER)
    assert p.shapes["boxes"] == ShapeRange((1, 3840, 5), (4, 3840, 5), (8, 3840, 5))
    with pytest.raises(InputError, match=r"'boxes'.*dynamic dimensions \[0, 1\]") as e:
        resolve_profile(preset_spec("vga"), RANKER_DYN_N)
    assert "boxes:" in e.value.hint
    specs = specs_from_cli(["boxes:1x1x5"], ["boxes:1x500x5"], ["boxes:1x3840x5"], presets=["vga", "1080p"])
    assert len(specs) == 2  # boxes shapes join every preset profile
    ps = resolve_profiles(specs, RANKER_DYN_N)
    assert all(p.shapes["boxes"].opt == (1, 500, 5) for p in ps)
    assert ps[1].shapes["image"].opt == (1, 3, 1088, 1920)


def test_image_input_must_be_identifiable():
    two = {"a": (-1, 3, -1, -1), "b": (-1, 3, -1, -1)}
    with pytest.raises(InputError, match="which input is the image"):
        resolve_profile(preset_spec("vga"), two)


def test_select_profile_picks_tightest_fit():
    small = Profile({"input": ShapeRange((1, 3, 32, 32), (1, 3, 64, 64), (1, 3, 640, 640))})
    big = Profile({"input": ShapeRange((1, 3, 32, 32), (1, 3, 1088, 1920), (1, 3, 2176, 3840))})
    tiles = Profile({"input": ShapeRange((1, 3, 1024, 1024), (4, 3, 1024, 1024), (8, 3, 1024, 1024))})
    profiles = [big, small, tiles]
    assert select_profile(profiles, {"input": (1, 3, 480, 640)}) == 1
    assert select_profile(profiles, {"input": (1, 3, 1088, 1920)}) == 0
    assert select_profile(profiles, {"input": (6, 3, 1024, 1024)}) == 2
    with pytest.raises(EngineMismatchError, match=r"input 16x3x1024x1024 fall outside every profile"):
        select_profile(profiles, {"input": (16, 3, 1024, 1024)})
    with pytest.raises(EngineMismatchError):
        select_profile(profiles, {"other": (1, 3, 64, 64)})


def test_profile_dict_roundtrip():
    p = resolve_profile(preset_spec("tile1024"), RANKER)
    assert Profile.from_dict(p.to_dict()) == p
