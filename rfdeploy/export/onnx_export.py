"""PyTorch checkpoint -> ONNX: the inference path only, cleaned, checked, with the contract inside.

The detector graph holds the decode (sigmoid, STC filter, STR refinement, box decode) and a
fixed-size candidate selection: ``image [B,3,H,W] -> boxes [B,K,4], scores [B,K]``.
The ranker graph: ``image [B,3,H,W], boxes [B,N,5] -> scores [B,N]``.
Everything a backend needs to feed the model (preprocessing contract, config, thresholds) is
written into ``metadata_props``; backends read it from there.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from rfdeploy import __version__
from rfdeploy.core import metadata as keys
from rfdeploy.core.errors import BuildError
from rfdeploy.core.fsutil import atomic_write_bytes
from rfdeploy.core.metadata import onnx_metadata, set_onnx_metadata
from rfdeploy.models.config import DetectorConfig, RankerConfig

DEFAULT_OPSET = 17

DETECTOR_IO = {"inputs": ["image"], "outputs": ["boxes", "scores"]}
RANKER_IO = {"inputs": ["image", "boxes"], "outputs": ["scores"]}


@dataclass
class ExportResult:
    path: Path
    kind: str
    metadata: dict[str, str]
    verify: dict | None = None


def model_metadata(cfg: DetectorConfig | RankerConfig, source_sha256: str | None) -> dict[str, str]:
    """What an export writes into ``metadata_props`` (keys: rfdeploy.core.metadata)."""
    kind = "detector" if isinstance(cfg, DetectorConfig) else "ranker"
    meta = {
        keys.KIND: kind,
        keys.CONTRACT: cfg.contract.to_json(),
        keys.CONFIG: json.dumps(cfg.to_dict(), sort_keys=True),
        keys.VERSION: __version__,
        keys.PRECISION: "fp32",
        keys.IO: json.dumps(DETECTOR_IO if kind == "detector" else RANKER_IO),
    }
    if source_sha256:
        meta[keys.SOURCE_SHA256] = source_sha256
    return meta


def _trace_to_onnx(module: torch.nn.Module, args: tuple, input_names, output_names, dynamic_axes, opset: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic are expected here
        torch.onnx.export(
            module, args, buf, dynamo=False, opset_version=opset, input_names=input_names,
            output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True,
        )
    return onnx.load_from_string(buf.getvalue())


def clean_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding / simplification (onnxslim), then checker and shape inference."""
    import onnxslim

    meta = onnx_metadata(model)
    try:
        slim = onnxslim.slim(model)
    except Exception as e:  # simplification is an optimisation; a failure must not lose the export
        warnings.warn(f"onnxslim could not simplify the graph ({e}); keeping the traced graph")
        slim = model
    # stale or duplicated value_info entries from tracing would shadow the inferred types
    del slim.graph.value_info[:]
    slim = onnx.shape_inference.infer_shapes(slim, strict_mode=False)
    set_onnx_metadata(slim, meta)
    onnx.checker.check_model(slim, full_check=True)
    return slim


def export_model(model: torch.nn.Module, out_path: str | os.PathLike, *, source_sha256: str | None = None,
                 opset: int = DEFAULT_OPSET, sample_size: tuple[int, int] = (256, 320)) -> ExportResult:
    """Export a RefineFace or CRFace module (eval mode, inference path only)."""
    if opset < 17:
        raise BuildError(f"opset {opset} is too old; rfdeploy exports opset >= 17")
    cfg = model.cfg
    model = model.eval().float().cpu()
    h, w = sample_size
    image = torch.zeros(1, 3, h, w)
    try:
        if isinstance(cfg, DetectorConfig):
            proto = _trace_to_onnx(
                model, (image,), ["image"], ["boxes", "scores"],
                {"image": {0: "batch", 2: "height", 3: "width"}, "boxes": {0: "batch"}, "scores": {0: "batch"}},
                opset,
            )
        else:
            boxes = torch.zeros(1, cfg.num_boxes, 5)
            proto = _trace_to_onnx(
                model, (image, boxes), ["image", "boxes"], ["scores"],
                {"image": {0: "batch", 2: "height", 3: "width"}, "boxes": {0: "batch"}, "scores": {0: "batch"}},
                opset,
            )
        meta = model_metadata(cfg, source_sha256)
        set_onnx_metadata(proto, meta)
        proto = clean_graph(proto)
        # the candidate count is fixed by the config: state it, so consumers see static shapes
        k = cfg.candidates if isinstance(cfg, DetectorConfig) else cfg.num_boxes
        for out in proto.graph.output:
            dims = out.type.tensor_type.shape.dim
            if len(dims) >= 2:
                dims[1].Clear()
                dims[1].dim_value = k
    except BuildError:
        raise
    except Exception as e:
        raise BuildError(f"ONNX export of {cfg.name} failed: {e}") from e
    out_path = Path(out_path)
    atomic_write_bytes(out_path, proto.SerializeToString())
    return ExportResult(out_path, meta[keys.KIND], meta)
