"""Triton Python-backend model for one network of a CPU repository (detector or ranker).

:func:`rfdeploy.deploy.triton.write_triton_repo` (``cpu=True``) copies this file to
``<repo>/<network>/1/model.py`` beside ``model.onnx`` and ``network.json`` (the tensor names). It
runs the ONNX file with rfdeploy's onnxruntime runner, with the same tensor names, dims and
batching as the TensorRT model of a GPU repository, so the faces model calls either alike.
"""

import rfdeploy_env  # noqa: F401  (first: the stub's Python paths, see rfdeploy_env.py)

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from rfdeploy.runtime.backends.ort_runner import OrtRunner


class TritonPythonModel:
    def initialize(self, args):
        here = Path(__file__).resolve().parent
        spec = json.loads((here / "network.json").read_text(encoding="utf-8"))
        self.inputs, self.outputs = spec["inputs"], spec["outputs"]
        self.batched = int(spec["max_batch_size"]) > 0
        self.runner = OrtRunner(here / "model.onnx", device="cpu").activate()

    def _run(self, feeds):
        out = self.runner.infer(feeds)
        return [np.ascontiguousarray(out[n]) for n in self.outputs]

    def execute(self, requests):
        feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        # Requests the dynamic batcher grouped and whose shapes agree past the batch dim run as one
        # onnxruntime call (Triton keeps their total batch within max_batch_size).
        groups: dict = {}
        for i, f in enumerate(feeds):
            key = tuple(f[n].shape[1:] for n in self.inputs) if self.batched else i
            groups.setdefault(key, []).append(i)
        responses = [None] * len(requests)
        for members in groups.values():
            try:
                if len(members) == 1:
                    parts = [self._run(feeds[members[0]])]
                else:
                    stacked = {n: np.concatenate([feeds[i][n] for i in members]) for n in self.inputs}
                    outs = self._run(stacked)
                    cuts = np.cumsum([feeds[i][self.inputs[0]].shape[0] for i in members])[:-1]
                    split = [np.split(o, cuts) for o in outs]
                    parts = [[s[k] for s in split] for k in range(len(members))]
                for i, values in zip(members, parts):
                    tensors = [pb_utils.Tensor(n, np.ascontiguousarray(v)) for n, v in zip(self.outputs, values)]
                    responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
            except Exception as e:  # a failed call fails its own requests only
                for i in members:
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"{type(e).__name__}: {e}"))
        return responses

    def finalize(self):
        self.runner.deactivate()
