"""Check an exported ONNX model against the PyTorch module it came from (onnxruntime CPU)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from rfdeploy.core.errors import BuildError
from rfdeploy.models.config import DetectorConfig


@dataclass
class OutputError:
    name: str
    max_abs: float
    max_rel: float
    compared: int


@dataclass
class VerifyReport:
    cases: list[tuple[str, list[OutputError]]] = field(default_factory=list)
    tolerance: float = 1e-5

    @property
    def worst_rel(self) -> float:
        return max((e.max_rel for _, errs in self.cases for e in errs), default=0.0)

    @property
    def ok(self) -> bool:
        return self.worst_rel <= self.tolerance

    def lines(self) -> list[str]:
        out = []
        for case, errs in self.cases:
            for e in errs:
                out.append(f"{case:<24} {e.name:<7} n={e.compared:<5} max_abs={e.max_abs:.3e} max_rel={e.max_rel:.3e}")
        return out


def _rel(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if a.size == 0:
        return 0.0, 0.0
    d = float(np.abs(a - b).max())
    return d, d / max(float(np.abs(b).max()), 1e-12)


def compare_candidates(ort_boxes, ort_scores, ref_boxes, ref_scores, min_score: float, min_count: int = 50):
    """Errors on the kept candidates (score > min_score, or the best ``min_count`` if fewer).

    Candidates are paired by nearest box among near-equal scores, since TopK may order near-ties
    differently across runtimes.
    """
    order = np.argsort(-ref_scores, kind="stable")
    n = max(int((ref_scores > min_score).sum()), min(min_count, len(ref_scores)))
    ref_idx = order[:n]
    rb, rs = ref_boxes[ref_idx], ref_scores[ref_idx]
    # pair each reference candidate with the ONNX candidate of (nearly) the same score and box
    cost = np.abs(rs[:, None] - ort_scores[None, :]) * 1e4 + np.abs(rb[:, None, :] - ort_boxes[None, :, :]).sum(-1)
    pick = cost.argmin(axis=1)
    ab, am = _rel(ort_boxes[pick], rb)
    sb, sm = _rel(ort_scores[pick], rs)
    return [OutputError("boxes", ab, am, n), OutputError("scores", sb, sm, n)]


def verify_onnx(model: torch.nn.Module, onnx_path, inputs: list[tuple[str, np.ndarray]], tolerance: float = 1e-5,
                raise_on_fail: bool = True) -> VerifyReport:
    """Run each (name, preprocessed image tensor) through both and compare.

    Detector: boxes/scores of the kept candidates. Ranker: all refined scores, with candidate
    boxes generated from a fixed seed.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    report = VerifyReport(tolerance=tolerance)
    model = model.eval()
    is_det = isinstance(model.cfg, DetectorConfig)
    rng = np.random.default_rng(0)
    for name, x in inputs:
        with torch.no_grad():
            if is_det:
                tb, ts = (t.numpy() for t in model(torch.from_numpy(x)))
                ob, os_ = sess.run(None, {"image": x})
                errs = []
                for i in range(x.shape[0]):
                    errs += compare_candidates(ob[i], os_[i], tb[i], ts[i], model.cfg.score_threshold)
            else:
                boxes = rng.random((x.shape[0], model.cfg.num_boxes, 5), dtype=np.float32)
                boxes[..., 4] = -np.sort(-boxes[..., 4], axis=1)
                ts = model(torch.from_numpy(x), torch.from_numpy(boxes)).numpy()
                (os_,) = sess.run(None, {"image": x, "boxes": boxes})
                a, r = _rel(os_, ts)
                errs = [OutputError("scores", a, r, ts.size)]
        report.cases.append((name, errs))
    if raise_on_fail and not report.ok:
        raise BuildError(
            f"ONNX output differs from PyTorch beyond tolerance (worst rel {report.worst_rel:.2e} > {tolerance:.0e})\n"
            + "\n".join(report.lines())
        )
    return report
