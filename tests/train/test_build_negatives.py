"""training/build_negatives.py: windows cut for negatives keep clear of faces and, when mining,
hold the false detection they were placed on."""

import json

import numpy as np
import pytest

from repo_scripts import load_script
from shared_data import SHARED_DATA


def _module():
    return load_script("training/build_negatives.py")


def _clear(mod, faces, win, margin):
    return not mod._overlaps(mod._grow(faces, margin), win).any()


def test_mined_windows_hold_their_detection_and_avoid_faces():
    mod = _module()
    faces = np.array([[100, 100, 160, 170]], np.float32)
    dets = np.array([
        [110, 105, 150, 160],   # the face itself, a little loose: not a false positive
        [500, 300, 540, 340],   # on clothes, far from the face
        [505, 302, 538, 336],   # a duplicate inside the first window: skipped
        [800, 60, 830, 90],     # a second false positive
    ], np.float32)
    rng = np.random.default_rng(0)
    wins = mod.windows_on_detections(1000, 600, faces, dets, rng, margin=0.4, min_side=128, per_image=3)
    assert len(wins) == 2
    for win, det in zip(wins, dets[[1, 3]]):
        assert win[0] <= det[0] and win[1] <= det[1] and win[2] >= det[2] and win[3] >= det[3]
        assert min(win[2] - win[0], win[3] - win[1]) >= 128
        assert 0 <= win[0] and 0 <= win[1] and win[2] <= 1000 and win[3] <= 600
        assert _clear(mod, faces, win, 0.4)


def test_mined_window_is_dropped_when_no_placement_clears_the_face():
    mod = _module()
    # a detection right beside a face: every window big enough to hold it with context touches the face
    faces = np.array([[100, 100, 200, 200]], np.float32)
    dets = np.array([[250, 120, 290, 160]], np.float32)
    wins = mod.windows_on_detections(400, 400, faces, dets, np.random.default_rng(0), margin=0.4, min_side=200,
                                     per_image=2)
    assert wins == []


def test_free_windows_avoid_grown_faces():
    mod = _module()
    faces = np.array([[300, 200, 380, 300], [50, 50, 90, 100]], np.float32)
    wins = mod.free_windows(800, 600, faces, np.random.default_rng(1), margin=0.4, min_side=96, per_image=4)
    assert wins
    for win in wins:
        assert _clear(mod, faces, win, 0.4)


def test_a_missing_mining_detector_is_a_clear_error(tmp_path, capsys):
    if SHARED_DATA is None or not (SHARED_DATA / "models" / "centerface.onnx").is_file():
        pytest.skip("needs the shared data's teacher models (../shared/data/models)")
    mod = _module()
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps({"images": []}))
    out = tmp_path / "neg"
    rc = mod.main(["--annotations", str(ann), "--shared", str(SHARED_DATA), "--mine", str(tmp_path / "none.onnx"),
                   "--out", str(out)])
    assert rc == 2 and "--mine: detector model not found" in capsys.readouterr().err
    assert not out.exists()


def test_an_unreadable_photo_leaves_no_half_made_set(tmp_path, capsys):
    if SHARED_DATA is None or not (SHARED_DATA / "models" / "centerface.onnx").is_file():
        pytest.skip("needs the shared data's teacher models (../shared/data/models)")
    mod = _module()
    (tmp_path / "a.jpg").write_bytes(b"not a picture")
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps({"images": [{"file": "a.jpg", "width": 640, "height": 480, "faces": []}]}))
    out = tmp_path / "neg"
    rc = mod.main(["--annotations", str(ann), "--shared", str(SHARED_DATA), "--out", str(out)])
    assert rc == 2 and "error:" in capsys.readouterr().err
    assert not out.exists()
