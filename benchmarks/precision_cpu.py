"""onnxruntime CPU latency and output agreement of fp32 / fp16 / int8 versions of one model.

    python benchmarks/precision_cpu.py --onnx det.onnx --images DIR [--size 640] [--num-calib 32] [--target cpu]
    python benchmarks/precision_cpu.py --build toy|resnet18 --images DIR      # synthetic models

The fp16 and int8 files are made with rfdeploy.export.fp16.convert_fp16 and rfdeploy.calib.calibrate
(calibrated on --num-calib images of --images), then all three run in the same process on the
same preprocessed inputs (--size long side, square canvas). Latency is the median over --runs
single-image runs after warm-up; agreement is reported against fp32 per output: max abs error,
max abs error / max |fp32|, and, because TopK order can swap among near-ties without any real
disagreement, the error of the sorted scores and the share of boxes found within 1 px among the
fp32 boxes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rfdeploy.calib import calibrate  # noqa: E402
from rfdeploy.calib.calibrate import _model_inputs, prepare_image, synthetic_boxes  # noqa: E402
from rfdeploy.core.contract import PreprocessContract  # noqa: E402
from rfdeploy.core.metadata import CONTRACT as METADATA_KEY  # noqa: E402
from rfdeploy.core.metadata import onnx_metadata, read_contract  # noqa: E402
from rfdeploy.core.onnxinfo import load_onnx  # noqa: E402
from rfdeploy.export.fp16 import convert_fp16  # noqa: E402


def build_resnet18_detector(path: Path, topk: int = 1000) -> Path:
    """ResNet-18 (random weights) + 3-level FPN (strides 8-32, 128 ch) + 2-conv heads + decode + TopK."""
    import onnx
    import torch
    import torchvision
    from torch import nn

    class Det(nn.Module):
        def __init__(self):
            super().__init__()
            r = torchvision.models.resnet18(weights=None)
            self.stem = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1)
            self.c3, self.c4, self.c5 = r.layer2, r.layer3, r.layer4
            self.lat = nn.ModuleList(nn.Conv2d(c, 128, 1) for c in (128, 256, 512))
            self.head = nn.Sequential(*[m for _ in range(2) for m in (nn.Conv2d(128, 128, 3, 1, 1), nn.ReLU())])
            self.out = nn.Conv2d(128, 6, 3, 1, 1)  # cls, stc, 4 box deltas

        def forward(self, image):
            c3 = self.c3(self.stem(image))
            c4 = self.c4(c3)
            c5 = self.c5(c4)
            p5 = self.lat[2](c5)
            p4 = self.lat[1](c4) + nn.functional.interpolate(p5, size=c4.shape[2:], mode="nearest")
            p3 = self.lat[0](c3) + nn.functional.interpolate(p4, size=c3.shape[2:], mode="nearest")
            outs, anchors = [], []
            for p, s in ((p3, 8), (p4, 16), (p5, 32)):
                o = self.out(self.head(p)).flatten(2).transpose(1, 2)  # B x HW x 6
                hh, ww = p.shape[2], p.shape[3]
                ys = torch.arange(hh, dtype=torch.float32) * s + s / 2
                xs = torch.arange(ww, dtype=torch.float32) * s + s / 2
                cy = ys[:, None].expand(hh, ww).reshape(-1)
                cx = xs[None, :].expand(hh, ww).reshape(-1)
                anchors.append(torch.stack([cx, cy, torch.full_like(cx, 4.0 * s)], -1))
                outs.append(o)
            o = torch.cat(outs, 1)
            a = torch.cat(anchors, 0).unsqueeze(0)
            scores = torch.sigmoid(o[..., 0])
            scores = torch.where(1 - torch.sigmoid(o[..., 1]) > 0.99, torch.zeros_like(scores), scores)
            cx = a[..., 0] + o[..., 2] * 0.1 * a[..., 2]
            cy = a[..., 1] + o[..., 3] * 0.1 * a[..., 2]
            w = a[..., 2] * torch.exp(o[..., 4] * 0.2)
            h = a[..., 2] * torch.exp(o[..., 5] * 0.2)
            boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
            top, idx = torch.topk(scores, topk, dim=1)
            return torch.gather(boxes, 1, idx.unsqueeze(-1).expand(-1, -1, 4)), top

    torch.manual_seed(0)
    model = Det().eval()
    torch.onnx.export(
        model, (torch.randn(1, 3, 320, 320),), str(path), input_names=["image"], output_names=["boxes", "scores"],
        opset_version=17, dynamo=False, dynamic_axes={"image": {0: "B", 2: "H", 3: "W"}},
    )
    m = onnx.load(str(path))
    m.metadata_props.add(key=METADATA_KEY, value=PreprocessContract().to_json())
    onnx.save(m, str(path))
    return path


def _median_ms(sess, feeds: list[dict], runs: int) -> float:
    for f in feeds[:2]:
        sess.run(None, f)
    times = []
    for i in range(runs):
        f = feeds[i % len(feeds)]
        t = time.perf_counter()
        sess.run(None, f)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _agreement(ref: list[np.ndarray], got: list[np.ndarray], names: list[str]) -> dict:
    out = {}
    for name, a, b in zip(names, ref, got):
        err = float(np.abs(a - b).max())
        d = {"max_abs": err, "max_rel": err / max(float(np.abs(a).max()), 1e-12)}
        if a.ndim == 2:  # score-like: order-free comparison too
            d["sorted_max_abs"] = float(np.abs(np.sort(a, 1) - np.sort(b, 1)).max())
        if a.ndim == 3 and a.shape[-1] == 4:  # boxes: is each box also among the fp32 boxes?
            near = np.stack([np.abs(bi[:, None] - ai[None]).max(-1).min(1) for ai, bi in zip(a, b)])
            d["matched_within_1px"] = float((near <= 1.0).mean())
            d["median_match_px"] = float(np.median(near))
        out[name] = d
    return out


def run(onnx_path: Path, images: Path, out_dir: Path, size: int, num_calib: int, runs: int, threads: int,
        target: str = "tensorrt") -> dict:
    import onnxruntime as ort

    fp16, int8 = out_dir / "model_fp16.onnx", out_dir / "model_int8.onnx"
    t = time.perf_counter()
    convert_fp16(onnx_path, fp16)
    t_fp16 = time.perf_counter() - t
    t = time.perf_counter()
    rep = calibrate(onnx_path, images, int8, num=num_calib, calib_size=size, allow_fewer=True, target=target)
    t_int8 = time.perf_counter() - t

    model = load_onnx(onnx_path)
    contract, inputs = read_contract(onnx_metadata(model), onnx_path), _model_inputs(model, onnx_path)
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[:4]
    feeds = []
    for i, p in enumerate(files):
        x, lb = prepare_image(p, contract, size)
        f = {inputs.image: x}
        if inputs.boxes:
            f[inputs.boxes] = synthetic_boxes(lb, inputs.num_boxes or 256, 1000 + i)[None]
        feeds.append(f)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sessions = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
                for k, p in (("fp32", onnx_path), ("fp16", fp16), ("int8", int8))}
    names = [o.name for o in sessions["fp32"].get_outputs()]
    lat = {k: _median_ms(s, feeds, runs) for k, s in sessions.items()}
    ref = sessions["fp32"].run(None, feeds[0])
    result = {
        "model": str(onnx_path),
        "int8_target": target,
        "input_shape": list(feeds[0][inputs.image].shape),
        "threads": threads,
        "median_ms": {k: round(v, 2) for k, v in lat.items()},
        "speed_ratio_int8_over_fp32": round(lat["fp32"] / lat["int8"], 3),
        "speed_ratio_fp16_over_fp32": round(lat["fp32"] / lat["fp16"], 3),
        "agreement_vs_fp32": {k: _agreement(ref, sessions[k].run(None, feeds[0]), names) for k in ("fp16", "int8")},
        "conversion_s": {"fp16": round(t_fp16, 2), "int8": round(t_int8, 2)},
        "calibration_images": rep.num_used,
        "int8_quantized_nodes": rep.quantized_nodes,
    }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--onnx", type=Path, help="fp32 ONNX exported by rfdeploy (with its contract)")
    src.add_argument("--build", choices=("toy", "resnet18"), help="build a synthetic detector instead")
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--num-calib", type=int, default=32)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: default)")
    ap.add_argument("--target", choices=("tensorrt", "cpu"), default="tensorrt", help="INT8 file layout")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.build == "toy":
            from tests.precision_fixtures import export_toy_detector

            path = export_toy_detector(tmp / "toy.onnx", width=32)
        elif args.build == "resnet18":
            path = build_resnet18_detector(tmp / "resnet18_det.onnx")
        else:
            path = args.onnx
        print(json.dumps(run(path, args.images, tmp, args.size, args.num_calib, args.runs, args.threads,
                                    args.target), indent=2))


if __name__ == "__main__":
    main()
