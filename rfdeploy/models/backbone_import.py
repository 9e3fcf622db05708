"""Import a face-trained backbone from a third-party detector's ONNX file.

The WIDER FACE-trained detectors users already have (RetinaFace-MobileNet0.25, CenterFace) carry
backbones that rfdeploy's own ``Backbone`` modules reproduce exactly. The ONNX files have batch
norm folded into the convolutions, so the import:

1. walks the ONNX ``Conv`` nodes in graph order and pairs them with the backbone's ``Conv2d``
   modules in execution order, checking kernel shape, stride, padding, dilation and groups;
2. puts BatchNorm back as an identity that carries the folded bias (gamma 1, beta = bias,
   mean 0, var 1 - eps), so the backbone fine-tunes like any other;
3. verifies the result: every imported convolution's output (after its BN) against the same
   tensor computed by onnxruntime on a real image. Nothing is returned before this passes.

The backbone's preprocessing contract (channel order, mean, std) comes with it: the detector
trained on top must be fed as the backbone was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.errors import InputError, ModelFileError
from rfdeploy.core.examples import example_image
from rfdeploy.core.image_io import load_image
from rfdeploy.core.preprocess import preprocess
from rfdeploy.models.backbones import Backbone


@dataclass(frozen=True)
class BackboneSource:
    """What a known detector's ONNX holds: which rfdeploy backbone, fed how."""

    backbone: str
    contract: PreprocessContract
    activation: str  # ONNX op type that follows the convolutions
    description: str


SOURCES = {
    "retinaface": BackboneSource(
        "mobilenet_v1_025",
        PreprocessContract(mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0), channel_order="BGR"),
        "LeakyRelu",
        "RetinaFace-MobileNet0.25 (WIDER FACE): BGR pixels minus (104, 117, 123), not scaled",
    ),
    "centerface": BackboneSource(
        "mobilenet_v2_relu",
        PreprocessContract(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), channel_order="RGB"),
        "Relu",
        "CenterFace (WIDER FACE): RGB pixels 0-255, no mean or std",
    ),
}

# relative error allowed between the imported backbone and onnxruntime, per convolution output
# (float32 on both sides; measured errors are ~1e-6 relative)
VERIFY_RTOL = 1e-3


@dataclass
class ImportReport:
    source: str
    backbone: str
    convs: int
    parameters: int
    max_rel_error: float
    verify_image: str
    verify_size: tuple[int, int]

    def to_dict(self) -> dict:
        return dict(self.__dict__, verify_size=list(self.verify_size))


def _conv_attrs(node) -> dict:
    import onnx

    a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
    return {
        "strides": tuple(a.get("strides", (1, 1))),
        "pads": tuple(a.get("pads", (0, 0, 0, 0))),
        "dilations": tuple(a.get("dilations", (1, 1))),
        "group": int(a.get("group", 1)),
    }


def _backbone_convs(bb: Backbone) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(conv, its BN) in execution order; every conv of these backbones is followed by a BN."""
    mods = list(bb.net.modules())
    pairs = []
    for i, m in enumerate(mods):
        if isinstance(m, nn.Conv2d):
            bn = next((x for x in mods[i + 1:] if isinstance(x, (nn.BatchNorm2d, nn.Conv2d))), None)
            if not isinstance(bn, nn.BatchNorm2d):
                raise ModelFileError(f"backbone {bb.name}: a convolution without batch norm")
            pairs.append((m, bn))
    return pairs


def detect_source(model) -> str:
    """Which known detector an ONNX graph is, by its structure."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    init = {i.name: i for i in model.graph.initializer}
    first = init.get(convs[0].input[1]) if convs else None
    if first is None:
        raise ModelFileError("no convolution with a constant weight at the start of the graph")
    dims = tuple(first.dims)
    ops = {n.op_type for n in model.graph.node}
    if dims == (8, 3, 3, 3) and "LeakyRelu" in ops:
        return "retinaface"
    if dims == (32, 3, 3, 3) and "Relu" in ops:
        return "centerface"
    raise ModelFileError(
        f"not a detector whose backbone rfdeploy can import (first conv {dims}, ops {sorted(ops)[:8]}...)",
        hint=f"known: {', '.join(f'{k} ({v.description})' for k, v in SOURCES.items())}",
    )


def _load_onnx(path):
    import onnx

    p = Path(path)
    if not p.is_file():
        raise InputError(f"backbone source not found: {p}")
    try:
        return onnx.load(str(p))
    except Exception as e:  # noqa: BLE001 - any parse failure means the file is not a usable ONNX
        raise ModelFileError(f"{p} is not a readable ONNX file: {e}") from None


def _copy_weights(model, bb: Backbone, activation: str) -> list[str]:
    """Copy ONNX conv weights into ``bb``; returns the ONNX output names of the imported convs."""
    from onnx import numpy_helper

    init = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type in ("Constant", "Identity")}

    def tensor(name: str) -> np.ndarray:
        if name in init:
            return numpy_helper.to_array(init[name])
        node = consts.get(name)  # weights routed through Identity nodes (common in torch exports)
        if node is not None and node.op_type == "Identity":
            return tensor(node.input[0])
        raise ModelFileError(f"convolution weight {name!r} is not a constant")

    onnx_convs = [n for n in model.graph.node if n.op_type == "Conv"]
    pairs = _backbone_convs(bb)
    if len(onnx_convs) < len(pairs):
        raise ModelFileError(f"the ONNX graph has {len(onnx_convs)} convolutions; backbone {bb.name} needs {len(pairs)}")
    outputs = []
    for k, ((conv, bn), node) in enumerate(zip(pairs, onnx_convs)):
        w = tensor(node.input[1])
        b = tensor(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0], np.float32)
        at = _conv_attrs(node)
        want = {
            "strides": tuple(conv.stride), "dilations": tuple(conv.dilation), "group": conv.groups,
            "pads": (conv.padding[0], conv.padding[1], conv.padding[0], conv.padding[1]),
        }
        got = {key: at[key] for key in want}
        if tuple(w.shape) != tuple(conv.weight.shape) or got != want:
            raise ModelFileError(
                f"convolution {k} ({node.name or node.output[0]}) does not match backbone {bb.name}: "
                f"ONNX weight {tuple(w.shape)} {got}, expected {tuple(conv.weight.shape)} {want}"
            )
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(np.array(w, np.float32)))
            # folded BN -> identity BN carrying the bias: (x - 0) / sqrt(1 - eps + eps) * 1 + b
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.from_numpy(b.astype(np.float32)))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
        outputs.append(node.output[0])
    acts = {n.op_type for n in model.graph.node if n.input and n.input[0] in set(outputs)}
    if activation not in acts:
        raise ModelFileError(f"expected {activation} after the backbone's convolutions, found {sorted(acts)}")
    return outputs


def _verify(model, bb: Backbone, outputs: list[str], contract: PreprocessContract, image: np.ndarray) -> float:
    """Max relative error over every imported conv output, onnxruntime vs torch."""
    import onnx
    import onnxruntime as ort

    x, _ = preprocess(image, contract)
    # expose the conv outputs as graph outputs; drop the detector's own outputs
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    for name in outputs:
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    # some exports fix the input size (CenterFace: 10x3x32x32) or list weights as inputs
    inits = {i.name for i in m.graph.initializer}
    keep = [i for i in m.graph.input if i.name not in inits]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    for d, name in zip(m.graph.input[0].type.tensor_type.shape.dim, ("batch", "channels", "height", "width")):
        if name != "channels":
            d.ClearField("dim_value")
            d.dim_param = name
    del m.graph.value_info[:]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ref = sess.run(outputs, {sess.get_inputs()[0].name: x})

    got: list[torch.Tensor] = []
    # clone: the in-place activation after each BN would overwrite the captured tensor
    hooks = [bn.register_forward_hook(lambda _m, _i, o: got.append(o.detach().clone())) for _c, bn in _backbone_convs(bb)]
    try:
        bb.eval()
        with torch.no_grad():
            bb(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    worst = 0.0
    for k, (r, g) in enumerate(zip(ref, got)):
        g = g.numpy()
        if r.shape != g.shape:
            raise ModelFileError(f"imported backbone: convolution {k} gives shape {g.shape}, onnxruntime {r.shape}")
        rel = float(np.abs(r - g).max() / max(1e-6, float(np.abs(r).max())))
        worst = max(worst, rel)
    return worst


def import_backbone(onnx_path, *, source: str | None = None, verify_image=None) -> tuple[Backbone, PreprocessContract, ImportReport]:
    """Backbone weights from a detector's ONNX, verified against onnxruntime on a real image.

    Raises ModelFileError (exit code 3) when the file is not a known detector, a convolution does
    not match, or the verification fails.
    """

    model = _load_onnx(onnx_path)
    source = source or detect_source(model)
    if source not in SOURCES:
        raise InputError(f"unknown backbone source {source!r}; choose from {sorted(SOURCES)}")
    spec = SOURCES[source]
    bb = Backbone(spec.backbone)
    outputs = _copy_weights(model, bb, spec.activation)
    img_path = Path(verify_image) if verify_image is not None else example_image()
    rgb = load_image(img_path).rgb
    err = _verify(model, bb, outputs, spec.contract, rgb)
    if not err <= VERIFY_RTOL:
        raise ModelFileError(
            f"imported backbone does not reproduce {Path(onnx_path).name}: max relative error {err:.3g} "
            f"> {VERIFY_RTOL} on {img_path.name}"
        )
    report = ImportReport(source, spec.backbone, len(outputs), sum(p.numel() for p in bb.parameters()), err,
                          str(img_path), (int(rgb.shape[1]), int(rgb.shape[0])))
    return bb, spec.contract, report
