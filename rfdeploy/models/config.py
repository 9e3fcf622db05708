"""Architecture configurations for RefineFace (detector) and CRFace (ranker).

Paper values are the defaults; presets name the variants users pick on the command line.
A config travels with every checkpoint (JSON) and every exported model (ONNX metadata).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

from rfdeploy.core.contract import PreprocessContract

BACKBONES = ("resnet18", "resnet50", "resnet101", "resnet152", "mobilenet_v2", "mobilenet_v2_relu", "mobilenet_v1_025")
# TensorRT refuses TopK with K above this (FACTS): larger candidate sets are selected per level.
TENSORRT_MAX_TOPK = 3840


@dataclass(frozen=True)
class FSMConfig:
    """Feature Supervision Module (training only)."""

    enabled: bool = True
    roi_size: int = 5
    num_proposals: int = 512
    proposal_nms: float = 0.7
    channels: int = 256
    num_convs: int = 3
    neg_iou: float = 0.4
    pos_iou: float = 0.7
    loss_weight: float = 1.0


@dataclass(frozen=True)
class DetectorConfig:
    name: str = "refineface_r50"
    kind: str = "refineface"
    backbone: str = "resnet50"
    fpn_channels: int = 256
    head_channels: int = 256
    head_convs: int = 4  # RFE replaces the middle two when use_rfe (the middle one of three)
    use_rfe: bool = True
    # depthwise-separable 3x3 convs in the FPN and the heads (CPU-speed variants)
    separable: bool = False
    # one tower per level shared by the classification and both regression predictors (each keeps
    # its own final conv), instead of the paper's separate subnets: a third of the head work at
    # every level, for the CPU-speed variants
    shared_tower: bool = False
    # "paper": RFE branches 1x3, 3x1, 1x5, 5x1; "stacked": the earlier 1xk-then-kx1 branches, for
    # checkpoints made with it (their configs predate this field)
    rfe_layout: str = "paper"
    strides: tuple[int, ...] = (4, 8, 16, 32, 64, 128)
    # anchor sizes per level are stride * each scale; aspect ratio is height / width
    anchor_scales: tuple[float, ...] = (2.0, 2.0 * math.sqrt(2.0))
    anchor_ratio: float = 1.25
    # RetinaNet/SSD-style deltas: (dx, dy) / center_var, log(dw, dh) / size_var
    center_variance: float = 0.1
    size_variance: float = 0.2
    stc_levels: tuple[int, ...] = (0, 1, 2)  # P2-P4: two-step classification
    str_levels: tuple[int, ...] = (3, 4, 5)  # P5-P7: two-step regression
    stc_threshold: float = 0.99  # drop anchors whose first-step negative confidence exceeds this
    candidates: int = 5000  # fixed-size candidate set out of the network (pre-NMS)
    score_threshold: float = 0.05
    nms_iou: float = 0.4
    max_detections: int = 750
    output_score_threshold: float = 0.5  # what `infer` reports by default
    # Tiling of large images: faces up to tile_max_face px (at the detector's input scale) are
    # found whole in full-resolution tiles, larger ones in downscaled passes, each pass covering
    # sizes tile_min_face..tile_max_face. None: the largest anchor, and the face logic's 16 px.
    # Set per model from measurement (smaller overlaps mean fewer tiles).
    tile_max_face: int | None = None
    tile_min_face: int | None = None
    sml_alpha: float = 15.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    fsm: FSMConfig = field(default_factory=FSMConfig)
    contract: PreprocessContract = field(default_factory=PreprocessContract)

    def __post_init__(self):
        if self.kind != "refineface":
            raise ValueError(f"not a detector config (kind={self.kind!r})")
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose from {BACKBONES}")
        if len(self.strides) != 6:
            raise ValueError("RefineFace uses six pyramid levels (P2-P7)")
        if set(self.stc_levels) & set(self.str_levels):
            raise ValueError("a level is either STC (low) or STR (high), not both")
        if self.candidates < 1 or self.max_detections < 1:
            raise ValueError("candidates and max_detections must be >= 1")
        if not 0.0 < self.stc_threshold <= 1.0:
            raise ValueError("stc_threshold must be in (0, 1]")
        if self.rfe_layout not in ("paper", "stacked"):
            raise ValueError(f"rfe_layout must be 'paper' or 'stacked', got {self.rfe_layout!r}")
        lo, hi = self.tile_min_face, self.tile_max_face
        if (hi is not None and hi < 2) or (lo is not None and lo < 1) or (
                lo is not None and hi is not None and lo >= hi):
            raise ValueError(f"need 1 <= tile_min_face < tile_max_face, got {lo}, {hi}")
        if self.head_convs < 2 or (self.use_rfe and self.head_convs < 3):
            raise ValueError("head_convs must be >= 2 (>= 3 with RFE, which replaces the middle convs)")

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_scales)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DetectorConfig":
        d = dict(d)
        _reject_unknown(cls, d)
        if "rfe_layout" not in d:
            # configs stored before the field existed used the stacked RFE, unless they already
            # carry "separable" (added together with the paper RFE)
            d["rfe_layout"] = "paper" if "separable" in d else "stacked"
        if "fsm" in d:
            d["fsm"] = FSMConfig(**d["fsm"])
        if "contract" in d:
            d["contract"] = PreprocessContract.from_dict(d["contract"])
        for k in ("strides", "anchor_scales", "stc_levels", "str_levels"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


@dataclass(frozen=True)
class RankerConfig:
    name: str = "crface_large"
    kind: str = "crface"
    backbone: str = "resnet50"
    fpn_channels: int = 256
    conf_channels: int = 256  # confidence module width (paper: 256 large, 64 small)
    bpn_channels: int = 64
    bpn_layers: int = 9
    bpn_kernel: tuple[int, int] = (3, 5)
    num_boxes: int = 3840  # N: the paper uses 5000; TensorRT's TopK stops at 3840
    rank_pairs: int = 10
    # Per-candidate head (not in the paper): each row's own BPN features plus the pooled image
    # context give that row's residual. The paper's head (global average pool, then one FC to all
    # N rows) cannot tie a row's output to that row's input, so its ranking loss stays near ln 2
    # wherever the right order depends on the candidates (docs/benchmarks.md, "Ranker").
    box_head: bool = False
    # RoI head (not in the paper; needs box_head): each row also gets the backbone's features
    # sampled inside its own box (roi_size x roi_size points per map, C2-C4, the box grown by
    # roi_expand for context). Without it a row sees its pixels only through pooled context, so
    # the ranker cannot tell a face from a hand the detector scored alike. The model maps the
    # image-normalised boxes onto its input, so the contract must not pad (pad_multiple 1).
    roi_head: bool = False
    roi_size: int = 3
    roi_expand: float = 1.3
    # Training: weight of the calibration term (losses.calibration_loss) beside the ranking loss;
    # 0 is the paper's objective. With it the refined score is a face probability on one scale
    # for every detector, so the ranker can carry its own output threshold.
    calib_weight: float = 0.0
    # The output threshold `infer` applies to refined scores when this ranker runs (0: the
    # detector's own, which only fits a ranker that keeps the detector's score scale).
    output_score_threshold: float = 0.0
    # The lowest detector score among the candidates it was trained on: with this ranker the
    # runtime hands it candidates down to this score (the detector's own candidate threshold
    # alone would hide the low candidates it learned to lift).
    candidate_score_threshold: float = 0.01
    # The ranker sees the whole image downscaled so its long side is this (CRFace trains at 1024).
    contract: PreprocessContract = field(
        default_factory=lambda: PreprocessContract(resize="long_side", resize_to=1024)
    )

    def __post_init__(self):
        if self.kind != "crface":
            raise ValueError(f"not a ranker config (kind={self.kind!r})")
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose from {BACKBONES}")
        if self.bpn_layers % 3 != 0 or self.bpn_layers < 3:
            raise ValueError("bpn_layers must be a multiple of 3 (features join the FPN every 3 layers)")
        if self.num_boxes < 2:
            raise ValueError("num_boxes must be >= 2")
        if self.contract.resize != "long_side":
            raise ValueError("the ranker's contract must resize the whole image (resize='long_side')")
        if self.roi_head:
            if not self.box_head:
                raise ValueError("roi_head needs box_head (the RoI features join the per-candidate head)")
            if self.contract.pad_multiple != 1:
                raise ValueError("roi_head needs an unpadded input (contract pad_multiple=1): boxes are "
                                 "normalised by the image, and padding would shift them on the feature maps")
            if self.roi_size < 1 or self.roi_expand <= 0:
                raise ValueError("roi_size must be >= 1 and roi_expand > 0")
        if self.calib_weight < 0 or not 0 <= self.output_score_threshold < 1:
            raise ValueError("calib_weight must be >= 0 and output_score_threshold in [0, 1)")
        if not 0 < self.candidate_score_threshold < 1:
            raise ValueError("candidate_score_threshold must be in (0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RankerConfig":
        d = dict(d)
        _reject_unknown(cls, d)
        if "contract" in d:
            d["contract"] = PreprocessContract.from_dict(d["contract"])
        if "bpn_kernel" in d:
            d["bpn_kernel"] = tuple(d["bpn_kernel"])
        return cls(**d)


def _reject_unknown(cls, d: dict) -> None:
    """Unknown fields, and scalar fields of the wrong type (a stored config edited by hand: a
    threshold "hi" would otherwise fail much later, far from its cause), are ValueErrors."""
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    for f in fields(cls):
        want = type(f.default)
        v = d.get(f.name)
        if want not in _SCALAR_OK or v is None:
            continue
        if not _SCALAR_OK[want](v):
            raise ValueError(f"{cls.__name__}.{f.name} must be a {want.__name__}, got {v!r}")


# what a stored value may be for a field whose default is of this type (bool is an int in Python,
# so it is excluded from the numbers; an int is a valid float)
_SCALAR_OK = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


_DETECTOR_PRESETS = {
    "refineface_r18": dict(backbone="resnet18"),
    "refineface_r50": dict(backbone="resnet50"),
    "refineface_r101": dict(backbone="resnet101"),
    "refineface_r152": dict(backbone="resnet152"),
    "refineface_mbv2": dict(backbone="mobilenet_v2"),
    # CPU preset: MobileNetV1-0.25 (face-trained weights importable from RetinaFace-MobileNet0.25),
    # narrow depthwise-separable FPN and heads, one RFE per subnet
    "refineface_mnet025": dict(backbone="mobilenet_v1_025", fpn_channels=32, head_channels=16, head_convs=3,
                               separable=True),
    # refineface_mnet025 made cheaper per pixel: a 16-channel FPN and one tower per level shared by
    # the classifier and both regressors (0.8x its network time at VGA on onnxruntime CPU)
    "refineface_mnet025_lite": dict(backbone="mobilenet_v1_025", fpn_channels=16, head_channels=16, head_convs=3,
                                    separable=True, shared_tower=True),
}
_RANKER_PRESETS = {
    "crface_large": dict(backbone="resnet50", fpn_channels=256, conf_channels=256),
    # paper 5.5: MobileNet backbone and a 64-channel confidence module (MobileNetV1 there;
    # MobileNetV2 here, the only ImageNet MobileNet weights available)
    "crface_small": dict(backbone="mobilenet_v2", fpn_channels=64, conf_channels=64),
    # the CPU ranker: RetinaFace's face-trained MobileNetV1-0.25 (imported like the detector's), a
    # 16-channel BPN (its 9 layers over N x 5 cost 4x per doubling of width: at 64 channels and
    # N = 1000 they were most of the small ranker's 220 ms at VGA) and the per-candidate head
    "crface_mnet025": dict(backbone="mobilenet_v1_025", fpn_channels=32, conf_channels=32, bpn_channels=16,
                           box_head=True, num_boxes=1000),
    # crface_mnet025 whose rows also see their own pixels (RoI features from C2-C4), with a
    # 3-layer BPN: the 9-layer BPN over N x 5 was most of crface_mnet025's time
    # (RetinaFace's colours, unpadded: the RoI head needs it)
    "crface_roi": dict(backbone="mobilenet_v1_025", fpn_channels=32, conf_channels=32, bpn_channels=16,
                       bpn_layers=3, box_head=True, roi_head=True, num_boxes=1000,
                       contract=PreprocessContract(mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0), channel_order="BGR",
                                                   resize="long_side", resize_to=320, pad_multiple=1)),
}


def detector_config(name: str = "refineface_r50", **overrides) -> DetectorConfig:
    if name not in _DETECTOR_PRESETS:
        raise ValueError(f"unknown detector preset {name!r}; choose from {sorted(_DETECTOR_PRESETS)}")
    return DetectorConfig(name=name, **{**_DETECTOR_PRESETS[name], **overrides})


def ranker_config(name: str = "crface_large", **overrides) -> RankerConfig:
    if name not in _RANKER_PRESETS:
        raise ValueError(f"unknown ranker preset {name!r}; choose from {sorted(_RANKER_PRESETS)}")
    return RankerConfig(name=name, **{**_RANKER_PRESETS[name], **overrides})


def preset_names() -> list[str]:
    return sorted(_DETECTOR_PRESETS) + sorted(_RANKER_PRESETS)


def config_from_dict(d: dict) -> DetectorConfig | RankerConfig:
    kind = d.get("kind")
    if kind == "refineface":
        return DetectorConfig.from_dict(d)
    if kind == "crface":
        return RankerConfig.from_dict(d)
    raise ValueError(f"config has unknown kind {kind!r} (expected 'refineface' or 'crface')")


def config_to_json(cfg: DetectorConfig | RankerConfig) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)
