"""Triton Python-backend model ``rfdeploy_faces``: one encoded image in, faces out.

:func:`rfdeploy.deploy.triton.write_triton_repo` copies this file to ``<repo>/rfdeploy_faces/1/model.py``
beside ``faces.json`` (the settings it writes). It runs only inside Triton's Python backend, with
rfdeploy importable there (installed in the server's Python, or through ``rfdeploy_env.py``);
all the logic is :mod:`rfdeploy.runtime.facelogic`, and the two networks are BLS calls to the
network models (TensorRT plans on GPUs, onnxruntime on CPUs).
"""

import rfdeploy_env  # noqa: F401  (first: the stub's Python paths, see rfdeploy_env.py)

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from rfdeploy.core.image_io import decode_image_bytes
from rfdeploy.runtime.facelogic import FaceLogicConfig, detect_faces


class TritonPythonModel:
    def initialize(self, args):
        model_dir = Path(args.get("model_repository") or Path(__file__).resolve().parent.parent)
        version = str(args.get("model_version") or "1")
        self.settings = json.loads((model_dir / version / "faces.json").read_text(encoding="utf-8"))
        self.cfg = FaceLogicConfig.from_dict(self.settings["facelogic"])
        self.detector = self.settings["detector"]
        self.ranker = self.settings.get("ranker")

    def _bls(self, model, inputs, outputs):
        kwargs = {}
        if hasattr(pb_utils, "PreferredMemory"):  # Triton >= 23.04
            # a TensorRT plan leaves its outputs in GPU memory, where as_numpy() cannot read them;
            # the face logic runs on the host, so ask for them there
            kwargs["preferred_memory"] = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)
        request = pb_utils.InferenceRequest(
            model_name=model,
            requested_output_names=list(outputs),
            inputs=[pb_utils.Tensor(name, np.ascontiguousarray(array)) for name, array in inputs.items()],
            **kwargs,
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{model}: {response.error().message()}")
        return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]

    def infer_detector(self, batch):
        d = self.detector
        boxes, scores = self._bls(d["model"], {d["input"]: batch.astype(d["input_dtype"])}, [d["boxes"], d["scores"]])
        return boxes.astype(np.float32), scores.astype(np.float32)

    def infer_ranker(self, image, boxes):
        r = self.ranker
        inputs = {r["image"]: image.astype(r["image_dtype"]), r["boxes"]: boxes.astype(r["boxes_dtype"])}
        (scores,) = self._bls(r["model"], inputs, [r["scores"]])
        return scores.astype(np.float32)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                payload = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
                if payload.dtype == np.object_:  # TYPE_STRING / BYTES: one element holding the file
                    payload = payload.reshape(-1)[0]
                rgb = decode_image_bytes(payload)
                ranker = self.infer_ranker if self.ranker else None
                det = detect_faces(rgb, self.infer_detector, ranker, self.cfg)
                det_scores = det.scores if det.detector_scores is None else det.detector_scores
                outputs = [
                    pb_utils.Tensor("BOXES", det.boxes.astype(np.float32).reshape(-1, 4)),
                    pb_utils.Tensor("SCORES", det.scores.astype(np.float32)),
                    pb_utils.Tensor("DETECTOR_SCORES", det_scores.astype(np.float32)),
                    pb_utils.Tensor("IMAGE_SIZE", np.asarray([rgb.shape[1], rgb.shape[0]], np.int32)),
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            except Exception as e:  # one bad image fails its own request only
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"{type(e).__name__}: {e}")))
        return responses

    def finalize(self):
        pass
