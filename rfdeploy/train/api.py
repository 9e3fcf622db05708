"""What `rfdeploy train detector|ranker` do after option parsing."""

from __future__ import annotations

from pathlib import Path

from rfdeploy.errors import InputError


def train_detector_cli(*, data, annotations, preset, out, steps, batch_size, size, lr, device, workers, time_budget,
                       use_fsm, imagenet):
    from rfdeploy.models.config import detector_config
    from rfdeploy.train.recipes import default_detector_config, synthetic_dataset
    from rfdeploy.train.trainer import TrainOptions, train_detector

    d = Path(data)
    if not d.is_dir():
        raise InputError(f"data folder not found: {d}")
    cfg = default_detector_config() if preset == "default" else detector_config(preset)
    if annotations:
        from rfdeploy.train.augment import RefineFaceAugment
        from rfdeploy.train.datasets import DetectionDataset, read_annotations

        ds = DetectionDataset(read_annotations(annotations, d), contract=cfg.contract, transform=RefineFaceAugment(size=size))
    else:
        if not (d / "facecrops").is_dir() or not (d / "backgrounds").is_dir():
            raise InputError(f"{d} has no facecrops/ and backgrounds/", hint="or give --annotations for a labelled dataset")
        ds = synthetic_dataset(d, cfg, length=batch_size * 200, size=size)
    default_imagenet = d / "models" / "mobilenet_v2_imagenet.pth"
    if imagenet is None and cfg.backbone == "mobilenet_v2" and default_imagenet.is_file():
        imagenet = default_imagenet
    opts = TrainOptions(steps=steps, batch_size=batch_size, lr=lr, device=device, workers=workers,
                        time_budget_s=time_budget, warmup_steps=min(500, max(1, steps // 10)))
    return train_detector(cfg, ds, opts, out, imagenet_weights=imagenet, use_fsm=use_fsm)


def train_ranker_cli(*, data, detectors, out, scenes, steps, batch_size, device, time_budget, lr=1e-3,
                     final_lr_ratio=1e-3):
    from rfdeploy.train.recipes import train_default_ranker

    ckpts = [p for p in detectors if Path(p).suffix.lower() != ".onnx"]
    onnx = [p for p in detectors if Path(p).suffix.lower() == ".onnx"]
    if len(ckpts) != 1:
        raise InputError("give exactly one RefineFace checkpoint with --detector (plus any third-party .onnx)")
    return train_default_ranker(data, ckpts[0], out, device=device, scenes=scenes, steps=steps, batch_size=batch_size,
                                time_budget_s=time_budget, extra_onnx_detectors=onnx, lr=lr,
                                final_lr_ratio=final_lr_ratio)
