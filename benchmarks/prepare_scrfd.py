"""Make SCRFD-2.5G (InsightFace) take any input size, for use as an evaluation reference.

    python benchmarks/prepare_scrfd.py scrfd-0.3.0.tar.gz -o /work/data_ref/scrfd_2.5g_dynamic.onnx
    python benchmarks/prepare_scrfd.py scrfd.onnx -o scrfd_dynamic.onnx

The model ships as ``models/scrfd.onnx`` in the source package of PyPI ``scrfd==0.3.0``
(``pip download --no-deps --no-binary :all: scrfd==0.3.0``); SRC is that archive or the ONNX file.
Its export fixes the input to 1x3x640x640 and the two FPN upsamplings to the matching sizes; this
rewrites them as scale-2 Resizes and frees the input's height and width
(``rfdeploy.runtime.adapters.make_scrfd_dynamic``, the same rewrite the ``scrfd`` adapter applies
on load). Checked with onnxruntime before writing: at the fixed size (640x640) the outputs equal the
original's within 1e-5, and the model runs at 480x640 and 1088x1920 with 2 anchors per point.

InsightFace's pretrained models are for non-commercial research only: keep the file outside the
repository, evaluate with it, never train from it or from its outputs.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rfdeploy.core.errors import InputError, ModelFileError, RfdeployError  # noqa: E402
from rfdeploy.core.fsutil import atomic_write_bytes  # noqa: E402
from rfdeploy.core.onnxinfo import read_signature  # noqa: E402
from rfdeploy.runtime.adapters import SCRFDAdapter, make_scrfd_dynamic

MEMBER = "models/scrfd.onnx"
LICENCE_NOTE = ("InsightFace SCRFD-2.5G pretrained weights: non-commercial research only; "
                "evaluation reference, not a teacher")


def read_source(src: Path) -> bytes:
    if not src.is_file():
        raise InputError(f"not found: {src}")
    if src.suffix == ".onnx":
        return src.read_bytes()
    try:
        with tarfile.open(src) as tar:
            member = next((m for m in tar.getmembers() if m.isfile() and m.name.endswith("/" + MEMBER)), None)
            if member is None:
                raise InputError(f"{src} holds no {MEMBER}", hint="use the sdist of scrfd==0.3.0 (the wheel has no model)")
            return tar.extractfile(member).read()
    except tarfile.TarError as e:
        raise InputError(f"{src} is neither an .onnx file nor a readable source archive: {e}") from e


def run(model_bytes: bytes, height: int, width: int, x: np.ndarray | None = None) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    if x is None:
        x = np.random.default_rng(height * 7 + width).uniform(-1, 1, (1, 3, height, width)).astype(np.float32)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x})))


def prepare(data: bytes) -> bytes:
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # DecodeError and friends for bytes that are not ONNX
        raise ModelFileError(f"not a readable ONNX model: {e}") from e
    signature = read_signature(model)
    adapter = SCRFDAdapter()
    adapter.check(signature)
    fixed = signature.inputs[0].shape[2:]
    if len(fixed) != 2 or not all(isinstance(d, int) for d in fixed):
        raise ModelFileError(f"expected the export's fixed input size, got {signature.describe()}",
                             hint="give the model as shipped (models/scrfd.onnx), not a rewritten one")
    fh, fw = fixed
    original = run(data, fh, fw)
    model = make_scrfd_dynamic(model, signature.inputs[0].name)
    del model.metadata_props[:]
    model.metadata_props.add(key="licence", value=LICENCE_NOTE)
    onnx.checker.check_model(model)
    out = model.SerializeToString()

    rewritten = run(out, fh, fw)
    worst = max(float(np.abs(original[k] - rewritten[k]).max()) for k in original)
    print(f"{fh}x{fw}: {len(original)} outputs, max abs difference to the original {worst:.3g}")
    if worst > 1e-5:  # not bitwise: onnxruntime picks other kernels once shapes are dynamic
        raise ModelFileError(f"the rewritten model differs from the original at {fh}x{fw} by {worst}")
    for h, w in ((480, 640), (1088, 1920)):
        res = run(out, h, w)
        for s in adapter.strides:
            n = res[f"score_{s}"].shape[-2]
            if n != 2 * (h // s) * (w // s):
                raise ModelFileError(f"{h}x{w}: score_{s} has {n} rows, expected {2 * (h // s) * (w // s)}")
        print(f"{h}x{w}: runs, anchors per stride {[res[f'score_{s}'].shape[-2] for s in adapter.strides]}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="the scrfd==0.3.0 source archive, or its models/scrfd.onnx")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.output.exists() and not args.overwrite:
            raise InputError(f"{args.output} exists", hint="use --overwrite")
        if ROOT in args.output.resolve().parents:
            raise InputError(f"{args.output} is inside the repository: the weights must not be committed",
                             hint="write it outside, e.g. /work/data_ref/")
        atomic_write_bytes(args.output, prepare(read_source(args.src)))
    except RfdeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
