"""Teacher pseudo-labels: faces that two independent detectors agree on, in video frames and photos.

A face is labelled where both teachers find it (best-IoU pairs at or above ``agree_iou``, each
score at or above ``min_score``); its box is the mean of the two boxes. A confident detection of
only one teacher becomes an ``ignore`` box: it may be a face, so training treats it as neither
face nor background. Frames where the teachers disagree a lot are dropped entirely.

The output is the project's annotation JSON (``rfdeploy.train.datasets.read_json_annotations``)
beside the frames written as JPEG, so ``rfdeploy train detector --annotations`` reads it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rfdeploy.core.errors import InputError
from rfdeploy.core.fsutil import atomic_write_bytes
from rfdeploy.core.image_io import iter_image_paths, load_image
from rfdeploy.core.video_io import is_video_file, iter_frames
from rfdeploy.runtime import adapters


# rgb -> (boxes [M,4] x1,y1,x2,y2, scores [M]) after the teacher's own NMS
Teacher = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class AgreementPolicy:
    agree_iou: float = 0.6  # IoU for two teachers' boxes to count as the same face
    min_score: float = 0.6  # each teacher's score on an agreed face
    lone_score: float = 0.8  # a face found by one teacher alone at this score -> ignore box
    max_lone_fraction: float = 0.5  # drop a frame where more than this share of faces is lone
    min_face: float = 8.0  # agreed faces smaller than this (px, shorter side) become ignore boxes

    def __post_init__(self):
        for name in ("agree_iou", "min_score", "lone_score", "max_lone_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InputError(f"{name} must be within [0, 1], got {v}")


@dataclass
class FrameLabels:
    boxes: np.ndarray  # [M,4] float32
    ignore: np.ndarray  # [M] bool
    agreed: int
    lone: int

    @property
    def usable(self) -> bool:
        return self.agreed > 0 or self.lone == 0


def agree(dets_a: tuple[np.ndarray, np.ndarray], dets_b: tuple[np.ndarray, np.ndarray],
          policy: AgreementPolicy = AgreementPolicy()) -> FrameLabels:
    """Agreement of two teachers' final detections on one image (greedy by IoU, one-to-one)."""
    import torch
    from torchvision.ops import box_iou

    (ba, sa), (bb, sb) = dets_a, dets_b
    ba, bb = np.asarray(ba, np.float32).reshape(-1, 4), np.asarray(bb, np.float32).reshape(-1, 4)
    sa, sb = np.asarray(sa, np.float32).reshape(-1), np.asarray(sb, np.float32).reshape(-1)
    iou = box_iou(torch.from_numpy(ba), torch.from_numpy(bb)).numpy() if len(ba) and len(bb) else np.zeros((len(ba), len(bb)))
    used_a, used_b = set(), set()
    boxes, ignore = [], []
    agreed = 0
    # best pairs first, each box used once
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = divmod(int(flat), iou.shape[1])
        if iou[i, j] < policy.agree_iou:
            break
        if i in used_a or j in used_b or min(sa[i], sb[j]) < policy.min_score:
            continue
        used_a.add(i)
        used_b.add(j)
        box = (ba[i] + bb[j]) / 2
        small = min(box[2] - box[0], box[3] - box[1]) < policy.min_face
        boxes.append(box)
        ignore.append(bool(small))
        agreed += int(not small)
    lone = 0
    for b, s, used in ((ba, sa, used_a), (bb, sb, used_b)):
        for k in range(len(b)):
            if k in used or s[k] < policy.lone_score:
                continue
            # the other teacher's box for the same face may have failed min_score: one ignore box
            if boxes and box_iou(torch.from_numpy(b[k:k + 1]), torch.from_numpy(np.stack(boxes))).max() >= policy.agree_iou:
                continue
            boxes.append(b[k])
            ignore.append(True)
            lone += 1
    out = FrameLabels(np.array(boxes, np.float32).reshape(-1, 4), np.array(ignore, bool), agreed, lone)
    if agreed + lone and lone / (agreed + lone) > policy.max_lone_fraction:
        out.agreed = 0  # the teachers disagree too much on this frame to trust either
    return out


def iter_video_frames(path: Path, every: int = 10, max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, HxWx3 uint8 RGB) for every ``every``-th decoded frame."""
    if every < 1:
        raise InputError(f"--every must be >= 1, got {every}")
    n = 0
    frames = iter_frames(path)
    try:
        for i, rgb in frames:
            if i % every:
                continue
            yield i, rgb
            n += 1
            if max_frames is not None and n >= max_frames:
                return
    finally:
        frames.close()  # closes the file now, not when the generator is collected


def iter_sources(inputs: list[str], every: int, max_frames: int | None) -> Iterator[tuple[str, np.ndarray]]:
    """(name, rgb) over videos (sampled frames) and images (files, folders, globs)."""

    images: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_file() and is_video_file(p):
            for i, rgb in iter_video_frames(p, every, max_frames):
                yield f"{p.stem}_f{i:06d}", rgb
        else:
            images.append(item)
    if images:
        for path in iter_image_paths(images):
            yield path.stem, load_image(path).rgb


def pseudo_label(inputs: list[str], teachers: list[Teacher], out_dir, *, every: int = 10,
                 max_frames: int | None = None, policy: AgreementPolicy = AgreementPolicy(),
                 source_note: str = "") -> dict:
    """Label ``inputs`` (videos, images, folders, globs) with two teachers' agreement.

    Writes ``out_dir/images/*.jpg`` and ``out_dir/annotations.json``; returns a summary.
    The annotation file is written last and atomically, so an interrupted run leaves none.
    """
    from PIL import Image

    if len(teachers) != 2:
        raise InputError(f"pseudo-labels need exactly two teachers, got {len(teachers)}")
    out = Path(out_dir)
    if (out / "annotations.json").exists():
        raise InputError(f"{out / 'annotations.json'} exists", hint="choose a new output folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    records, seen, kept, agreed, lone = [], 0, 0, 0, 0
    for name, rgb in iter_sources(inputs, every, max_frames):
        seen += 1
        labels = agree(teachers[0](rgb), teachers[1](rgb), policy)
        if not labels.usable:
            continue
        kept += 1
        agreed += labels.agreed
        lone += labels.lone
        rel = f"images/{name}.jpg"
        Image.fromarray(rgb).save(out / rel, quality=95)
        records.append({
            "file": rel, "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
            "source": name + (f" ({source_note})" if source_note else ""),
            "faces": [{"box": [round(float(v), 2) for v in b], "ignore": bool(ig)}
                      for b, ig in zip(labels.boxes, labels.ignore)],
        })
    if not seen:
        raise InputError("no frames or images found in the inputs")
    summary = {"inputs_seen": seen, "images_kept": kept, "agreed_faces": agreed, "lone_faces_ignored": lone,
               "policy": policy.__dict__}
    doc = {"images": records, "pseudo_labels": summary}
    atomic_write_bytes(out / "annotations.json", json.dumps(doc, indent=1).encode())
    return summary


def onnx_teacher(path, adapter=None, nms_iou: float = 0.4, score_thr: float = 0.5) -> Teacher:
    """A third-party ONNX detector (rfdeploy.runtime.adapters) as a teacher: final detections."""
    det = adapters.OnnxDetector(path, adapter=adapter)
    adapters.require_trainable(det.adapter, "label training data")

    def run(rgb: np.ndarray):
        d = det.detect(rgb, nms_iou=nms_iou, score_thr=score_thr)
        return d.boxes, d.scores

    return run
