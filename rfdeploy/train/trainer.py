"""Training loops for the detector (RefineFace recipe) and the ranker (CRFace recipe).

Runs on CPU (slowly) and CUDA. Logs one JSON line per logged step (losses, learning rate, time)
and saves checkpoints in the package's safetensors format.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from rfdeploy.core.boxes import pack_candidates
from rfdeploy.core.preprocess import preprocess
from rfdeploy.models import build, load
from rfdeploy.models.checkpoint import save_checkpoint
from rfdeploy.models.config import DetectorConfig, RankerConfig
from rfdeploy.train.augment import collate_fn


@dataclass
class TrainOptions:
    steps: int = 20000
    batch_size: int = 32
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 500
    warmup_start_lr: float = 3.125e-4
    # the paper divides the learning rate by 10 at 100 and 120 of 130 epochs
    milestones: tuple[float, ...] = (100 / 130, 120 / 130)
    optimizer: str = "sgd"  # sgd (RefineFace) or adam (CRFace)
    # adam: exponential decay from lr to lr * final_lr_ratio (CRFace: 1/1000 over its long run;
    # short runs learn little once the rate has collapsed, so they want a milder ratio)
    final_lr_ratio: float = 1e-3
    workers: int = 4
    device: str = "cpu"
    amp: bool = True  # bf16 autocast on CUDA
    log_every: int = 20
    save_every: int = 1000
    keep_every: int = 0  # also keep step{N}.safetensors every N steps (0: only last.safetensors)
    time_budget_s: float | None = None  # stop early (with a checkpoint) after this long
    seed: int = 0
    grad_clip: float = 10.0
    channels_last: bool = False  # faster convolutions on CPU (oneDNN) and tensor cores
    # backbone stages (of C2-C5) kept frozen, BN statistics included: on a CPU budget the
    # high-resolution early stages cost most of the backward pass and move least
    freeze_stages: int = 0
    # keep every backbone BatchNorm in eval mode (affine parameters still train): an imported
    # BN-folded backbone carries identity statistics that small CPU batches would overwrite
    freeze_bn: bool = False

    def progress(self, step: int, elapsed_s: float) -> float:
        """Fraction of training done: by steps, or by time when a time budget ends it sooner."""
        p = step / max(1, self.steps)
        if self.time_budget_s:
            p = max(p, elapsed_s / self.time_budget_s)
        return min(1.0, p)

    def lr_at(self, step: int, progress: float) -> float:
        if step < self.warmup_steps:
            t = step / max(1, self.warmup_steps)
            return self.warmup_start_lr + t * (self.lr - self.warmup_start_lr)
        if self.optimizer == "adam":
            return self.lr * (self.final_lr_ratio ** progress)
        return self.lr * 0.1 ** sum(progress >= m for m in self.milestones)


@dataclass
class TrainResult:
    checkpoint: Path
    steps: int
    seconds: float
    log: Path
    last_losses: dict = field(default_factory=dict)


def _optimizer(params, opts: TrainOptions):
    if opts.optimizer == "adam":
        return torch.optim.Adam(params, lr=opts.lr, weight_decay=0.0)
    return torch.optim.SGD(params, lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)


def _loop(model, loss_fn, loader, opts: TrainOptions, out_dir: Path, step_fn, extra_params=()):
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(opts.device)
    model.to(device).train()
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)
    frozen = _freeze_backbone(model, opts.freeze_stages)
    if opts.freeze_bn and hasattr(model, "backbone"):
        frozen += [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params)
    optim = _optimizer(params, opts)
    log_path = out_dir / "log.jsonl"
    ckpt = out_dir / "last.safetensors"
    start = time.time()
    step, last = 0, {}
    use_amp = opts.amp and device.type == "cuda"
    with open(log_path, "a") as log:
        epoch = 0
        while step < opts.steps:
            if hasattr(loader.dataset, "set_epoch"):
                loader.dataset.set_epoch(epoch)
            for batch in loader:
                for mod in frozen:
                    mod.eval()
                if opts.channels_last:
                    batch = (batch[0].contiguous(memory_format=torch.channels_last),) + tuple(batch[1:])
                lr = opts.lr_at(step, opts.progress(step, time.time() - start))
                for g in optim.param_groups:
                    g["lr"] = lr
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    losses = step_fn(model, loss_fn, batch, device)
                total = losses["total"]
                if not torch.isfinite(total):
                    raise FloatingPointError(f"loss became {float(total)} at step {step}")
                optim.zero_grad(set_to_none=True)
                total.backward()
                torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
                optim.step()
                step += 1
                if step % opts.log_every == 0 or step == 1:
                    last = {k: round(float(v.detach()), 5) for k, v in losses.items()}
                    rec = {"step": step, "lr": lr, "time_s": round(time.time() - start, 1), **last}
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                over_time = opts.time_budget_s is not None and time.time() - start > opts.time_budget_s
                if step % opts.save_every == 0 or step >= opts.steps or over_time:
                    save_checkpoint(model, ckpt)
                if opts.keep_every and step % opts.keep_every == 0:
                    # a phase's best point is not always its last (the schedule's decay can overfit
                    # one source of data): keep snapshots for evaluation
                    save_checkpoint(model, out_dir / f"step{step:06d}.safetensors")
                if step >= opts.steps or over_time:
                    break
            epoch += 1
            if opts.time_budget_s is not None and time.time() - start > opts.time_budget_s:
                break
    save_checkpoint(model, ckpt)
    return TrainResult(ckpt, step, time.time() - start, log_path, last)


def _freeze_backbone(model, stages: int) -> list:
    """Freeze the first ``stages`` backbone stages; returns the modules to keep in eval mode."""
    if stages <= 0 or not hasattr(model, "backbone"):
        return []
    mods = list(model.backbone.stage_modules()[: min(stages, 4)])
    for m in mods:
        for p in m.parameters():
            p.requires_grad_(False)
    return mods


def _detector_step(model, loss_fn, batch, device, teacher=None, distill=None, distill_weight: float = 1.0):
    images, targets = batch
    images = images.to(device, non_blocking=True)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    raw = model.forward_raw(images)
    # losses in float32: matching and focal terms are precision-sensitive
    raw = _to_float(raw)
    losses = loss_fn(raw, targets)
    if teacher is not None:
        with torch.no_grad():
            teacher_raw = _to_float(teacher.forward_raw(images))
        kd = distill(raw, teacher_raw)
        losses.update(kd)
        losses["total"] = losses["total"] + distill_weight * kd["kd_total"]
    return losses


def _to_float(x):
    if isinstance(x, torch.Tensor):
        return x.float()
    if isinstance(x, dict):
        return {k: _to_float(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_to_float(v) for v in x]
    return x


def train_detector(cfg: DetectorConfig, dataset, opts: TrainOptions, out_dir, *, imagenet_weights=None,
                   init_checkpoint=None, use_fsm: bool | None = None, use_sml: bool = True,
                   init_backbone=None, teacher=None, distill_weight: float = 1.0,
                   distill_score_weight: float = 1.0) -> TrainResult:
    """Train RefineFace: L = L_STR + L_STC + L_FSM (SML inside the classification losses), plus
    ``distill_weight`` x a dense distillation loss when a ``teacher`` detector (same anchors and
    input contract) is given (its score terms weighted ``distill_score_weight`` within it)."""
    from rfdeploy.models.losses import DistillationLoss, RefineFaceLoss, same_anchor_layout  # torchvision

    torch.manual_seed(opts.seed)
    model = build(cfg)
    if init_checkpoint is not None:
        model.load_state_dict(load(init_checkpoint).state_dict())
    elif init_backbone is not None:  # an imported, verified backbone (models.backbone_import)
        model.backbone.load_state_dict(init_backbone.state_dict())
    elif imagenet_weights is not None:
        model.backbone.load_imagenet(imagenet_weights)
    loss_fn = RefineFaceLoss(cfg, use_fsm=use_fsm, use_sml=use_sml).to(opts.device)
    step_fn = _detector_step
    if teacher is not None:
        differ = same_anchor_layout(cfg, teacher.cfg)
        if differ:
            raise ValueError(f"the teacher's outputs do not match the student's anchors: {', '.join(differ)} differ")
        teacher = teacher.to(opts.device).eval().requires_grad_(False)
        distill = DistillationLoss(cfg, score_weight=distill_score_weight)

        def step_fn(model, loss_fn, batch, device):
            return _detector_step(model, loss_fn, batch, device, teacher, distill, distill_weight)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=opts.batch_size, shuffle=not hasattr(dataset, "generator"), num_workers=opts.workers,
        collate_fn=collate_fn, drop_last=True, persistent_workers=opts.workers > 0, pin_memory=opts.device.startswith("cuda"),
    )
    out_dir = Path(out_dir)
    (out_dir / "options.json").parent.mkdir(parents=True, exist_ok=True)
    (out_dir / "options.json").write_text(json.dumps({"config": cfg.to_dict(), "options": asdict(opts)}, indent=1, default=str))
    return _loop(model, loss_fn, loader, opts, out_dir, step_fn, extra_params=loss_fn.parameters())


class RankerSamples(torch.utils.data.Dataset):
    """Precomputed (ranker image tensor, N x 5 candidates, oracle IoU) triples, augmented at random.

    Candidates come from frozen detectors run once over the training images (CRFace trains on
    detector outputs, never back-propagating into the detector). ``augment`` adds the paper's
    crop, scale and colour jitter to the flip: a zoom-in crop (candidates whose centre leaves it
    are dropped), a shrink onto a mean-coloured border, and a per-channel gain and shift of the
    normalised image. The oracle (each candidate's IoU with its face) does not change under
    either geometric step, so it travels with its row.

    ``with_extent``: samples carry a fourth item, the fraction (width, height) of the padded image
    tensor that the image covers (a RoI ranker maps image-normalised boxes onto its input with it).
    """

    def __init__(self, items: list[tuple[np.ndarray, np.ndarray, np.ndarray]], flip: bool = True, seed: int = 0,
                 augment: bool = False, scale_range: tuple[float, float] = (0.6, 1.0), with_extent: bool = False):
        if not 0.1 <= scale_range[0] <= scale_range[1] <= 1.0:
            raise ValueError(f"scale_range must satisfy 0.1 <= lo <= hi <= 1, got {scale_range}")
        self.items, self.flip, self.seed, self.epoch = items, flip, seed, 0
        self.augment, self.scale_range, self.with_extent = augment, scale_range, with_extent

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        x, cand, oracle = (torch.from_numpy(a) for a in self.items[i])
        rng = np.random.default_rng([self.seed, self.epoch, i])
        flip = self.flip and rng.random() < 0.5
        # the image's size inside the padding, read once; the augmentations keep the image inside
        # it (a shrink pads inside it), so it is also the extent a RoI ranker needs
        if flip or self.augment or self.with_extent:
            valid_h, valid_w = self._valid_hw(x)
        if flip:
            # horizontal flip of the image content; padding stays bottom/right, so flip the
            # valid width only (candidates are normalised by the valid image size)
            x = x.clone()
            x[:, :, :valid_w] = x[:, :, :valid_w].flip(-1)
            cand = cand.clone()
            live = cand[:, 4] > 0
            cand[live, 0] = 1.0 - cand[live, 0] - cand[live, 2]
        if self.augment:
            x, cand, oracle = self._geometry(x, cand, oracle, valid_h, valid_w, rng)
            x = self._colour(x, valid_h, valid_w, rng)
        if not self.with_extent:
            return x, cand, oracle
        return x, cand, oracle, torch.tensor([valid_w / x.shape[-1], valid_h / x.shape[-2]], dtype=torch.float32)

    def _geometry(self, x, cand, oracle, vh: int, vw: int, rng):
        """A zoom-in crop or a shrink, each a third of the time; boxes follow in normalised units."""
        import torch.nn.functional as F

        pick = rng.random()
        lo, hi = self.scale_range
        s = float(rng.uniform(lo, hi))
        if pick < 1 / 3 or s >= 0.999:
            return x, cand, oracle
        cand, oracle = cand.clone(), oracle.clone()
        live = cand[:, 4] > 0
        out = torch.zeros_like(x)
        if pick < 2 / 3:  # crop a window of s x s of the image and stretch it back over the image
            cx, cy = float(rng.uniform(0, 1 - s)), float(rng.uniform(0, 1 - s))
            x0, y0 = int(round(cx * vw)), int(round(cy * vh))
            cw, ch = max(1, int(round(s * vw))), max(1, int(round(s * vh)))
            win = x[None, :, y0:y0 + ch, x0:x0 + cw]
            out[:, :vh, :vw] = F.interpolate(win, size=(vh, vw), mode="bilinear", align_corners=False)[0]
            cand[live, 0] = (cand[live, 0] - cx) / s
            cand[live, 1] = (cand[live, 1] - cy) / s
            cand[live, 2:4] = cand[live, 2:4] / s
            centre_x = cand[:, 0] + cand[:, 2] / 2
            centre_y = cand[:, 1] + cand[:, 3] / 2
            inside = live & (centre_x >= 0) & (centre_x <= 1) & (centre_y >= 0) & (centre_y <= 1)
            # rows keep their score order; dropped ones leave no gap (zero rows mean "none")
            keep = inside.nonzero().flatten()
            packed, packed_oracle = torch.zeros_like(cand), torch.zeros_like(oracle)
            packed[: len(keep)], packed_oracle[: len(keep)] = cand[keep], oracle[keep]
            return out, packed, packed_oracle
        # shrink the image by s onto a border of the mean colour (0 after normalisation)
        sw, sh = max(1, int(round(s * vw))), max(1, int(round(s * vh)))
        ox, oy = int(rng.integers(0, vw - sw + 1)), int(rng.integers(0, vh - sh + 1))
        small = F.interpolate(x[None, :, :vh, :vw], size=(sh, sw), mode="bilinear", align_corners=False)[0]
        out[:, oy:oy + sh, ox:ox + sw] = small
        cand[live, 0] = cand[live, 0] * (sw / vw) + ox / vw
        cand[live, 1] = cand[live, 1] * (sh / vh) + oy / vh
        cand[live, 2] = cand[live, 2] * (sw / vw)
        cand[live, 3] = cand[live, 3] * (sh / vh)
        return out, cand, oracle

    @staticmethod
    def _colour(x, vh: int, vw: int, rng):
        """Brightness/contrast-like jitter: a per-channel gain and shift inside the valid image."""
        gain = torch.from_numpy(rng.uniform(0.75, 1.25, size=(x.shape[0], 1, 1)).astype(np.float32))
        shift = torch.from_numpy(rng.uniform(-0.2, 0.2, size=(x.shape[0], 1, 1)).astype(np.float32))
        x = x.clone()
        x[:, :vh, :vw] = x[:, :vh, :vw] * gain + shift * x[:, :vh, :vw].std()
        return x

    @staticmethod
    def _valid_hw(x: torch.Tensor) -> tuple[int, int]:
        """The image's size inside the bottom/right padding (padding is exactly 0)."""
        nz = x.abs().sum(dim=0) > 0
        rows, cols = nz.any(dim=1).nonzero(), nz.any(dim=0).nonzero()
        h = int(rows.max()) + 1 if len(rows) else x.shape[-2]
        w = int(cols.max()) + 1 if len(cols) else x.shape[-1]
        return h, w


def _ranker_step(model, loss_fn, batch, device):
    x, cand, oracle, *extent = (t.to(device, non_blocking=True) for t in batch)
    # the clip has no gradient (losses.ranker_loss)
    raw = model(x, cand, clip=False, extent=extent[0] if extent else None).float()
    return loss_fn(raw, oracle, cand[..., 4] > 0)


def train_ranker(cfg: RankerConfig, samples: RankerSamples, opts: TrainOptions, out_dir, *, imagenet_weights=None,
                 init_backbone=None, init_checkpoint=None) -> TrainResult:
    """Train CRFace with the pairwise ranking loss (``cfg.rank_pairs`` pairs), detectors frozen.
    ``init_backbone``: an imported, verified backbone module (models.backbone_import).
    ``init_checkpoint``: a ranker checkpoint of the same architecture to go on from."""
    from functools import partial

    from rfdeploy.models.losses import ranker_loss

    torch.manual_seed(opts.seed)
    model = build(cfg)
    if init_checkpoint is not None:
        model.load_state_dict(load(init_checkpoint).state_dict())
    elif init_backbone is not None:
        model.backbone.load_state_dict(init_backbone.state_dict())
    elif imagenet_weights is not None:
        model.backbone.load_imagenet(imagenet_weights)
    loader = torch.utils.data.DataLoader(samples, batch_size=opts.batch_size, shuffle=True, num_workers=opts.workers, drop_last=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "options.json").write_text(json.dumps({"config": cfg.to_dict(), "options": asdict(opts)}, indent=1, default=str))
    return _loop(model, partial(ranker_loss, pairs=cfg.rank_pairs, calib_weight=cfg.calib_weight), loader, opts, out_dir,
                 _ranker_step)


def build_ranker_samples(images_and_boxes, detectors, cfg: RankerConfig, *, min_score: float | None = None) -> list:
    """Run each detector over each (rgb uint8, gt boxes) pair; one sample per (image, detector).

    Candidates below ``min_score`` (default: ``cfg.candidate_score_threshold``, the lowest score
    the runtime hands this ranker) are left out.

    ``detectors``: callables rgb -> (boxes [K,4] xyxy image pixels, scores [K]).
    """
    from rfdeploy.models.losses import oracle_confidence  # torchvision

    min_score = cfg.candidate_score_threshold if min_score is None else min_score
    items = []
    for rgb, gt in images_and_boxes:
        h, w = rgb.shape[:2]
        x, _ = preprocess(rgb, cfg.contract, min_size=(cfg.contract.resize_to, cfg.contract.resize_to))
        for det in detectors:
            boxes, scores = det(rgb)
            keep = scores >= min_score
            cand, order = pack_candidates(boxes[keep], scores[keep], w, h, cfg.num_boxes)
            oracle = np.zeros(cfg.num_boxes, np.float32)
            if len(order):
                kept_boxes = torch.from_numpy(np.asarray(boxes[keep], np.float32)[order])
                oracle[: len(order)] = oracle_confidence(kept_boxes, torch.from_numpy(np.asarray(gt, np.float32).reshape(-1, 4))).numpy()
            items.append((x[0], cand, oracle))
    return items
