"""How much faster can INT8 be than fp32 on this CPU, one convolution at a time?

    python benchmarks/int8_ceiling.py [--detector ONNX] [--top 4] [--runs 15] [--threads 0]

The INT8 speed goal (>= 1.7x fp32 on onnxruntime's CPU EP) is about the whole detector; this
script measures the upper bound that the hardware and onnxruntime's kernels set, per layer. It
takes the ``--top`` convolutions of the detector's graph with the most multiply-adds at VGA
(640x480 input; shapes from onnx shape inference) and its largest depthwise convolution, and, as a
dense reference, two large ResNet-style 3x3 convolutions where INT8 GEMM should shine. Each
becomes a one-node fp32 model (Conv + Relu) and the same model quantized as the project's ``cpu``
target quantizes (its onnxruntime settings: QOperator, uint8 activations, int8 per-channel
weights; min/max over 4 random inputs), and the pair is timed
in rotating blocks in one process (rfdeploy.runtime.bench.interleaved_blocks). A layer whose
INT8 version is not 1.7x faster alone cannot make a network of such layers 1.7x faster.

It prints the CPU's INT8 dot-product extensions (AVX-VNNI, AVX512-VNNI, AMX): without them the
U8S8 kernels multiply through 16-bit intermediates (vpmaddubsw), at most about twice fp32 FMA's
throughput before any quantize/requantize work.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_DETECTOR = ROOT / "rfdeploy/models/weights/refineface_mnet025_default.onnx"
# (name, in channels, out channels, kernel, groups, height, width): dense references
REFERENCE_CONVS = [("dense 3x3 128->128 @160x120", 128, 128, 3, 1, 120, 160),
                   ("dense 3x3 256->256 @80x60", 256, 256, 3, 1, 60, 80)]


def cpu_int8_flags() -> list[str]:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return sorted(f for f in ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "amx_int8") if f in flags)


def detector_convs(path: Path, width: int = 640, height: int = 480) -> list[tuple]:
    """Every Conv of the detector as (name, cin, cout, k, groups, h, w, MACs) at width x height."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(path))
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    for d, v in zip(dims, (1, 3, height, width)):
        d.ClearField("dim_param")
        d.dim_value = v
    model = shape_inference.infer_shapes(model)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    inits = {i.name: i for i in model.graph.initializer}
    rows = []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.input[1] not in inits or node.input[0] not in shapes:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        groups = int(attrs.get("group", 1))
        strides = attrs.get("strides", [1, 1])
        if list(strides) != [1, 1] or w.shape[2] != w.shape[3]:
            continue  # the reference is a stride-1 square conv; strided ones are few and small
        _, cin, h, wd = shapes[node.input[0]]
        if not (cin and h and wd):
            continue
        cout, k = w.shape[0], w.shape[2]
        macs = cout * (cin // groups) * k * k * h * wd
        rows.append((node.name, cin, cout, k, groups, h, wd, macs))
    return rows


def conv_model(cin: int, cout: int, k: int, groups: int, h: int, w: int, seed: int):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((cout, cin // groups, k, k)) / np.sqrt(cin // groups * k * k)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], group=groups, pads=[k // 2] * 4, kernel_shape=[k, k]),
             helper.make_node("Relu", ["y"], ["out"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, h, w])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, cout, h, w])],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def quantize_cpu(src: Path, dst: Path, shape: tuple, seed: int) -> None:
    """Quantized with the cpu target's own settings (rfdeploy.calib.calibrate.quantizer_settings:
    QOperator, U8 activations, S8 per-channel weights, int32 biases), min/max over random inputs."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    from rfdeploy.calib.calibrate import quantizer_settings
    from rfdeploy.calib.targets import get_target

    rng = np.random.default_rng(seed)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(src), str(dst), Reader(), **quantizer_settings(get_target("cpu")))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector", type=Path, default=DEFAULT_DETECTOR)
    ap.add_argument("--top", type=int, default=4, help="the detector's convolutions with the most multiply-adds")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    args = ap.parse_args(argv)

    import onnx
    import onnxruntime as ort

    from rfdeploy.runtime.bench import interleaved_blocks, round_ratio

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice to pre-process, once per layer
    convs = sorted(detector_convs(args.detector), key=lambda r: -r[-1])
    total = sum(r[-1] for r in convs)
    # the heaviest dense layers, and the largest depthwise one (little arithmetic, much memory traffic)
    depthwise = [r for r in convs if r[4] > 1 and r[4] == r[1]][:1]
    picked = [(f"{n} ({ci}->{co} k{k} g{g} @{w}x{h}, {m / total:.0%} of MACs)", ci, co, k, g, h, w)
              for n, ci, co, k, g, h, w, m in convs[: args.top] + depthwise]
    print(f"CPU INT8 extensions: {', '.join(cpu_int8_flags()) or 'none found'}; onnxruntime {ort.__version__}")
    print(f"{args.detector.name}: {len(convs)} stride-1 convolutions, {total / 1e6:.0f} M multiply-adds at 640x480\n")
    print("| convolution | fp32 ms | int8 ms | int8 speed-up |")
    print("|---|---|---|---|")
    so = ort.SessionOptions()
    if args.threads:
        so.intra_op_num_threads = args.threads
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, ci, co, k, g, h, w) in enumerate(picked + REFERENCE_CONVS):
            f32, i8 = Path(tmp) / f"c{i}.onnx", Path(tmp) / f"c{i}_int8.onnx"
            onnx.save(conv_model(ci, co, k, g, h, w, seed=i), str(f32))
            quantize_cpu(f32, i8, (1, ci, h, w), seed=i)
            feed = {"x": np.random.default_rng(i).standard_normal((1, ci, h, w)).astype(np.float32)}
            sess = {name: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
                    for name, p in (("fp32", f32), ("int8", i8))}
            times = interleaved_blocks({n: (lambda s=s: s.run(None, feed)) for n, s in sess.items()},
                                       args.runs, block=10)
            speedup = round_ratio(times["fp32"], times["int8"])
            ratios.append(speedup)
            print(f"| {label} | {statistics.median(times['fp32']):.3f} | {statistics.median(times['int8']):.3f} "
                  f"| {speedup:.2f}x |")
    print(f"\nbest int8 speed-up of any layer: {max(ratios):.2f}x (goal for the whole network: 1.70x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
