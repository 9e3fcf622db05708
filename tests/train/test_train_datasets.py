from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.errors import InputError
from rfdeploy.core.preprocess import preprocess
from rfdeploy.train.augment import RefineFaceAugment, collate_fn
from rfdeploy.train.datasets import (
    DetectionDataset,
    SyntheticDataset,
    read_annotations,
    read_json_annotations,
    read_wider,
)
from rfdeploy.train.synth import SceneGenerator

WIDER_TXT = """0--Parade/a.jpg
2
10 20 30 40 0 0 0 0 0 0
50 60 5 6 2 0 0 1 0 0
0--Parade/empty.jpg
0
0 0 0 0 0 0 0 0 0 0
1--Handshaking/b.jpg
3
1 2 3 4 0 0 0 0 0 0
7 8 0 9 0 0 0 0 0 0
100 100 4 4
"""


def test_read_wider_quirks(tmp_path):
    gt = tmp_path / "wider_face_train_bbx_gt.txt"
    gt.write_text(WIDER_TXT)
    recs = read_wider(gt, tmp_path / "images", min_size=4.5)
    assert [r.path.name for r in recs] == ["a.jpg", "empty.jpg", "b.jpg"]
    np.testing.assert_allclose(recs[0].boxes, [[10, 20, 40, 60], [50, 60, 55, 66]])
    assert recs[0].ignore.tolist() == [False, True]  # invalid flag
    assert recs[1].boxes.shape == (0, 4)
    # zero-width box dropped; a 4x4 box is under min_size -> ignore
    np.testing.assert_allclose(recs[2].boxes, [[1, 2, 4, 6], [100, 100, 104, 104]])
    assert recs[2].ignore.tolist() == [True, True]
    assert recs[0].path == tmp_path / "images" / "0--Parade" / "a.jpg"
    assert read_annotations(gt)[0].path == tmp_path / "images" / "0--Parade" / "a.jpg"


def test_read_wider_errors(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text("a.jpg\ntwo\n")
    with pytest.raises(InputError, match="face count"):
        read_wider(gt, tmp_path)
    gt.write_text("a.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n")
    with pytest.raises(InputError, match="expected 2 face lines"):
        read_wider(gt, tmp_path)
    with pytest.raises(InputError):
        read_wider(tmp_path / "missing.txt", tmp_path)


def _json_set(tmp_path):
    img = np.zeros((120, 200, 3), np.uint8)
    img[30:70, 40:90] = (200, 50, 50)
    Image.fromarray(img).save(tmp_path / "x.png")
    ann = {"images": [{"file": "x.png", "width": 200, "height": 120,
                       "faces": [{"box": [40, 30, 90, 70], "ignore": False}, {"box": [1, 1, 3, 3], "ignore": True}]}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    return tmp_path / "ann.json", img


def test_json_reader_and_detection_dataset(tmp_path):
    path, img = _json_set(tmp_path)
    recs = read_json_annotations(path)
    assert recs[0].path == tmp_path / "x.png" and recs[0].ignore.tolist() == [False, True]
    contract = PreprocessContract()
    with pytest.raises(ValueError, match="pad_multiple"):
        DetectionDataset(recs, contract=contract, size=200)
    ds = DetectionDataset(recs, contract=contract, size=224)
    x, t = ds[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    resized = np.asarray(Image.fromarray(img).resize((224, 134), Image.BILINEAR))
    ref, _ = preprocess(np.ascontiguousarray(resized), contract, min_size=(224, 224))
    assert torch.allclose(x, torch.from_numpy(ref[0]), atol=1e-5)
    np.testing.assert_allclose(t["boxes"].numpy(), np.array([[40, 30, 90, 70], [1, 1, 3, 3]]) * ([224 / 200, 134 / 120] * 2), rtol=1e-5)
    assert t["ignore"].tolist() == [False, True]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"file": "x.png", "faces": [{"box": [5, 5, 1, 1]}]}]}))
    with pytest.raises(InputError, match="x2<=x1"):
        read_json_annotations(bad)


def test_detection_dataset_with_augment_batches(tmp_path):
    path, _ = _json_set(tmp_path)
    ds = DetectionDataset(read_json_annotations(path) * 3, transform=RefineFaceAugment(size=64))
    images, targets = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_fn)))
    assert images.shape == (3, 3, 64, 64) and len(targets) == 3
    assert all(t["boxes"].shape[1] == 4 and t["boxes"].shape[0] == t["ignore"].shape[0] for t in targets)


def test_synthetic_dataset(tiny_data):
    g = SceneGenerator(tiny_data / "facecrops", tiny_data / "backgrounds", out_size=(160, 128), seed=0)
    ds = SyntheticDataset(g, 4)
    x, t = ds[1]
    assert x.shape == (3, 128, 160)
    s = g.generate(1)
    np.testing.assert_allclose(t["boxes"].numpy(), s.boxes)
    ds.set_epoch(1)
    _, t2 = ds[1]  # epoch 1 shows scene 5
    np.testing.assert_allclose(t2["boxes"].numpy(), g.generate(5).boxes)
    with pytest.raises(IndexError):
        ds[4]
    aug = SyntheticDataset(g, 4, transform=RefineFaceAugment(size=96))
    images, targets = collate_fn([aug[i] for i in range(4)])
    assert images.shape == (4, 3, 96, 96)
    varied = SceneGenerator(tiny_data / "facecrops", tiny_data / "backgrounds", out_size=((100, 100), (200, 200)))
    with pytest.raises(ValueError, match="vary"):
        SyntheticDataset(varied, 4)
