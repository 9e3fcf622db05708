"""Re-make the bundled ONNX files from the bundled checkpoints, or check that they still match.

The package ships each default model twice in rfdeploy/models/weights/: the checkpoint
(torch backend, training) and its ONNX export (onnxruntime, engine builds), so that a first
`rfdeploy infer` exports nothing and needs no torch. After replacing a checkpoint there, run

    python benchmarks/export_bundled.py            # re-export both (verified against PyTorch)
    python benchmarks/export_bundled.py detector   # only one
    python benchmarks/export_bundled.py --check    # exit 1 when a shipped ONNX is stale

Exports go through the project's exporter (rfdeploy.export.api.export_checkpoint: the same
metadata, source sha256 included, and the same onnxruntime-vs-PyTorch verification as
`rfdeploy export`); a file that fails verification never replaces the shipped one.
tests/export/test_bundled_onnx.py runs the check, so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rfdeploy.models import DEFAULT_DETECTOR, DEFAULT_DETECTOR_ONNX, DEFAULT_RANKER, DEFAULT_RANKER_ONNX  # noqa: E402

BUNDLED = {"detector": (DEFAULT_DETECTOR, DEFAULT_DETECTOR_ONNX), "ranker": (DEFAULT_RANKER, DEFAULT_RANKER_ONNX)}
# the version the file was written by says nothing about the network it holds
IGNORED_KEYS = {"rfdeploy.version"}


def export_bundled(role: str, echo=print) -> Path:
    """Export one bundled checkpoint onto its shipped ONNX file (verified, then renamed into place)."""
    from rfdeploy.export.api import export_checkpoint

    checkpoint, dst = BUNDLED[role]
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=".onnx", dir=dst.parent)
    os.close(fd)
    try:
        for line in export_checkpoint(checkpoint, tmp, verify=True):
            echo(line.replace(tmp, str(dst)))
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dst


def _outputs(path: Path, inputs: list[tuple[str, np.ndarray]], num_boxes: int | None) -> list[dict[str, np.ndarray]]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(0)  # the ranker's candidate boxes, the same for both files
    out = []
    for _, x in inputs:
        feed = {"image": x}
        if num_boxes is not None:
            boxes = rng.random((x.shape[0], num_boxes, 5), dtype=np.float32)
            boxes[..., 4] = -np.sort(-boxes[..., 4], axis=1)
            feed["boxes"] = boxes
        out.append(dict(zip(names, sess.run(names, feed))))
    return out


def compare_with_fresh_export(checkpoint: Path, shipped: Path, workdir: str | os.PathLike,
                              tolerance: float = 1e-5) -> list[str]:
    """What differs between an ONNX file and a fresh export of the checkpoint it should hold: the
    source sha256, any other metadata, and the graphs' outputs on the export verification's
    inputs (the bundled photo and random tensors) beyond the export verification tolerance.
    Empty when they agree. The fresh export is kept in ``workdir`` and reused."""
    from rfdeploy.core.fsutil import sha256_file
    from rfdeploy.core.metadata import SOURCE_SHA256 as KEY_SOURCE_SHA
    from rfdeploy.core.metadata import onnx_metadata as read_metadata
    from rfdeploy.export.api import verification_inputs
    from rfdeploy.export.onnx_export import export_model
    from rfdeploy.export.verify import compare_candidates
    from rfdeploy.models import load
    from rfdeploy.models.config import DetectorConfig

    checkpoint, shipped = Path(checkpoint), Path(shipped)
    if not shipped.is_file():
        return [f"{shipped} is missing: run python benchmarks/export_bundled.py"]
    problems = []
    sha = sha256_file(checkpoint)
    meta = read_metadata(shipped)
    if meta.get(KEY_SOURCE_SHA) != sha:
        problems.append(f"{shipped.name} was exported from a checkpoint with sha256 {meta.get(KEY_SOURCE_SHA)}, "
                        f"{checkpoint.name} has {sha}")
    model = load(checkpoint)
    is_detector = isinstance(model.cfg, DetectorConfig)
    fresh = Path(workdir) / f"fresh-{checkpoint.stem}-{sha[:16]}.onnx"
    if not fresh.is_file():
        export_model(model, fresh, source_sha256=sha)
    fresh_meta = read_metadata(fresh)
    for key in sorted((set(meta) | set(fresh_meta)) - IGNORED_KEYS - {KEY_SOURCE_SHA}):
        if meta.get(key) != fresh_meta.get(key):
            problems.append(f"metadata {key}: shipped {meta.get(key)!r}, fresh export {fresh_meta.get(key)!r}")
    # the bundled photo through the runtime preprocessing, and a random input of a size no stride divides
    inputs = verification_inputs(model.cfg.contract, sizes=((97, 255),))
    num_boxes = None if is_detector else model.cfg.num_boxes
    for (case, _), a, b in zip(inputs, _outputs(shipped, inputs, num_boxes), _outputs(fresh, inputs, num_boxes)):
        if is_detector:
            errs = [e for i in range(len(a["scores"]))
                    for e in compare_candidates(a["boxes"][i], a["scores"][i], b["boxes"][i], b["scores"][i],
                                                model.cfg.score_threshold)]
            worst = max((e.max_rel for e in errs), default=0.0)
        else:
            d = float(np.abs(a["scores"] - b["scores"]).max())
            worst = d / max(float(np.abs(b["scores"]).max()), 1e-12)
        if not worst <= tolerance:
            problems.append(f"{case}: outputs differ by {worst:.2e} relative (tolerance {tolerance:.0e})")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("roles", nargs="*", metavar="detector|ranker", help="which bundled model (default: both)")
    ap.add_argument("--check", action="store_true", help="compare with a fresh export instead of writing")
    args = ap.parse_args(argv)
    roles = args.roles or list(BUNDLED)
    unknown = set(roles) - set(BUNDLED)
    if unknown:
        ap.error(f"unknown model {', '.join(sorted(unknown))}: choose from {', '.join(BUNDLED)}")
    if not args.check:
        for role in roles:
            print(f"wrote {export_bundled(role, echo=lambda s: print('  ' + s))}")
        return 0
    failed = False
    with tempfile.TemporaryDirectory() as work:
        for role in roles:
            problems = compare_with_fresh_export(*BUNDLED[role], work)
            print(f"{role}: " + ("matches a fresh export" if not problems else "STALE"))
            for p in problems:
                print("  " + p)
            failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
