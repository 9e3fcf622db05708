"""The reference backend: the PyTorch module itself (CPU or CUDA; fp16 on CUDA; optional CUDA
graphs for repeated input shapes, such as the tiles of large images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rfdeploy.errors import BackendUnavailableError
from rfdeploy.runtime.backends.base import Runner


# Captured graphs keep their own memory pools; a handful of shapes covers tiled inference
# (the full-tile batch, the last partial batch, and a few pyramid passes).
MAX_CUDA_GRAPHS = 8


class TorchRunner(Runner):
    name = "torch"
    accepts_torch = True

    def __init__(self, checkpoint_or_module, device: str = "cpu", fp16: bool = False, cuda_graph: bool = False,
                 notes: list[str] | None = None):
        super().__init__()
        import torch

        from rfdeploy.export.onnx_export import model_metadata

        if isinstance(checkpoint_or_module, torch.nn.Module):
            self.model, sha = checkpoint_or_module, None
        else:
            from rfdeploy.models import load
            from rfdeploy.models.checkpoint import sha256_file

            self.model, sha = load(Path(checkpoint_or_module)), sha256_file(checkpoint_or_module)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {device} requested but CUDA is not available")
        if fp16 and not device.startswith("cuda"):
            raise BackendUnavailableError("fp16 with the torch backend needs a CUDA device")
        if cuda_graph and not device.startswith("cuda"):
            raise BackendUnavailableError("CUDA graphs need a CUDA device (--device cuda)")
        self.device = torch.device(device)
        self.fp16 = fp16
        self.cuda_graph = cuda_graph
        self._graphs: dict = {}  # input shapes -> (graph, static inputs, static outputs), oldest first
        self.notes = notes if notes is not None else []  # shared with the caller's notes
        # the same metadata an export writes: one definition of the contract
        self._meta = model_metadata(self.model.cfg, sha)
        self.is_detector = self._meta["rfdeploy.kind"] == "detector"

    @property
    def metadata(self) -> dict[str, str]:
        return self._meta

    def describe(self) -> str:
        extra = (", fp16" if self.fp16 else "") + (", CUDA graphs" if self.cuda_graph else "")
        return f"torch ({self.device}{extra})"

    def activate(self):
        import torch

        self.model = self.model.to(self.device).eval()
        if self.fp16:
            self.model = self.model.half().to(memory_format=torch.channels_last)
        return super().activate()

    def deactivate(self) -> None:
        self._graphs.clear()
        super().deactivate()

    def _run(self, *inputs):
        if not self.cuda_graph:
            return self.model(*inputs)
        key = tuple((tuple(x.shape), x.dtype) for x in inputs)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(inputs)
            if entry is None:  # capture failed: eager from now on (said in notes)
                return self.model(*inputs)
            if len(self._graphs) >= MAX_CUDA_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))
            self._graphs[key] = entry
        graph, static_in, static_out = entry
        for dst, src in zip(static_in, inputs):
            dst.copy_(src)
        graph.replay()
        # the outputs live in the graph's pool and are overwritten by the next replay
        return tuple(o.clone() for o in static_out) if isinstance(static_out, tuple) else static_out.clone()

    def _capture(self, inputs):
        import torch

        static_in = tuple(x.clone() for x in inputs)
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up outside the graph (cuDNN autotuning, lazy init)
                for _ in range(2):
                    self.model(*static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.model(*static_in)
        except RuntimeError as e:
            self.cuda_graph = False
            self._graphs.clear()
            self.notes.append(f"CUDA graph capture failed, running eagerly: {str(e).splitlines()[0]}")
            return None
        return graph, static_in, static_out

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        if not self.active:
            self.activate()
        dtype = torch.float16 if self.fp16 else torch.float32
        with torch.inference_mode():
            image = torch.as_tensor(feed["image"], device=self.device).to(dtype)
            if self.fp16:
                image = image.contiguous(memory_format=torch.channels_last)
            if self.is_detector:
                boxes, scores = self._run(image)
                return {"boxes": boxes.float().cpu().numpy(), "scores": scores.float().cpu().numpy()}
            cand = torch.as_tensor(feed["boxes"], device=self.device).to(dtype)
            return {"scores": self._run(image, cand).float().cpu().numpy()}
