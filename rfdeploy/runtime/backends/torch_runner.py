"""The reference backend: the PyTorch module itself (CPU or CUDA; fp16 on CUDA; optional CUDA
graphs for repeated input shapes, such as the tiles of large images).

Precision on CUDA: fp32 runs with TF32 off (cuDNN convolutions and matmuls in full fp32), so GPU
results agree with the CPU and the exported ONNX within the fp32 tolerances; this is a process-wide
torch setting, made when an fp32 runner is activated on a GPU. ``fp16`` casts the module with
``.half()``; the models keep anchors, decoding, the STC test and the ranker's score + residual +
clip in fp32 inside (as the fp16 ONNX files do), and return fp32 outputs.

Threads: eager forwards may run from several threads at once. CUDA-graph replays share their
static inputs and outputs, so copy-in, replay and copy-out run under one lock, and each replay is
ordered after the previous one on the GPU (threads may use different streams).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from rfdeploy.core.errors import BackendUnavailableError
from rfdeploy.core.fsutil import sha256_file
from rfdeploy.core.metadata import read_kind
from rfdeploy.models import load
from rfdeploy.runtime.backends.base import Runner

# A handful of shapes covers tiled inference (the full-tile batch, the last partial batch, and a
# few pyramid passes). All graphs draw on one memory pool: they never run at the same time (the
# lock), and each graph's outputs stay referenced, so no graph reuses memory another one's results
# live in.
MAX_CUDA_GRAPHS = 8
# One capture at a time in the process (the detector's and the ranker's runners included): a
# capture's start empties torch's cache and synchronises the device, which must not meet another
# thread's capture halfway. Captures are rare (once per input shape).
_CAPTURE_LOCK = threading.Lock()


def disable_tf32(torch) -> None:
    """Full fp32 in cuDNN convolutions and CUDA matmuls (torch's conv default is TF32)."""
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision"):  # torch >= 2.9
        cudnn_conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def _module_caches(model) -> tuple:
    """Tensors a module keeps in plain dict attributes (RefineFace's anchor grids per feature
    size). A graph reads them by address at every replay, but the module may evict them later
    (a bounded cache): the graph's entry holds them so their memory is never reused."""
    import torch

    held = []
    for m in model.modules():
        for v in vars(m).values():
            if isinstance(v, dict) and v is not m._modules and v is not m._parameters and v is not m._buffers:
                held.extend(t for t in v.values() if isinstance(t, torch.Tensor))
    return tuple(held)


class TorchRunner(Runner):
    name = "torch"
    accepts_torch = True

    def __init__(self, checkpoint_or_module, device: str = "cpu", fp16: bool = False, cuda_graph: bool = False,
                 notes: list[str] | None = None):
        super().__init__()
        import torch

        from rfdeploy.export.onnx_export import model_metadata  # imports torch and onnx: only for this backend

        if isinstance(checkpoint_or_module, torch.nn.Module):
            self.model, sha = checkpoint_or_module, None
        else:
            self.model, sha = load(Path(checkpoint_or_module)), sha256_file(checkpoint_or_module)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {device} requested but CUDA is not available")
        if fp16 and not device.startswith("cuda"):
            raise BackendUnavailableError("fp16 with the torch backend needs a CUDA device")
        if cuda_graph and not device.startswith("cuda"):
            raise BackendUnavailableError("CUDA graphs need a CUDA device (--device cuda)")
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # graphs and streams need the index
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.fp16 = fp16
        self.cuda_graph = cuda_graph
        # input shapes -> (graph, static inputs, static outputs, module caches held), oldest first
        self._graphs: dict = {}
        self._graph_lock = threading.Lock()
        self._graph_pool = None  # one memory pool for every graph of this runner
        self._replayed = None  # CUDA event after the last replay's copy-out
        self.notes = notes if notes is not None else []  # shared with the caller's notes
        # the same metadata an export writes: one definition of the contract
        self._meta = model_metadata(self.model.cfg, sha)
        self.is_detector = read_kind(self._meta) == "detector"

    @property
    def metadata(self) -> dict[str, str]:
        return self._meta

    @property
    def on_host(self) -> bool:
        return self.device.type == "cpu"

    def describe(self) -> str:
        extra = (", fp16" if self.fp16 else "") + (", CUDA graphs" if self.cuda_graph else "")
        if self.device.type == "cuda" and not self.fp16:
            extra += ", fp32 without TF32"
        return f"torch ({self.device}{extra})"

    def activate(self):
        import torch

        self.model = self.model.to(self.device).eval()
        if self.device.type == "cuda" and not self.fp16:
            disable_tf32(torch)  # fp32 parity with the CPU (see the module docstring)
        if self.fp16:
            self.model = self.model.half().to(memory_format=torch.channels_last)
        return super().activate()

    def deactivate(self) -> None:
        with self._graph_lock:
            self._graphs.clear()
            self._graph_pool = self._replayed = None
        super().deactivate()

    def _run(self, *inputs):
        if self.cuda_graph:
            with self._graph_lock:
                out = self._replay(inputs) if self.cuda_graph else None
            if out is not None:
                return out
        return self.model(*inputs)

    def _replay(self, inputs):
        """Outputs of the graph for these input shapes (captured on first use); None: run eagerly."""
        import torch

        key = tuple((tuple(x.shape), x.dtype) for x in inputs)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(inputs)
            if entry is None:  # capture failed: eager from now on (said in notes)
                return None
            if len(self._graphs) >= MAX_CUDA_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))
            self._graphs[key] = entry
        graph, static_in, static_out, _ = entry
        stream = torch.cuda.current_stream(self.device)
        if self._replayed is not None:  # the previous caller may have queued its copy-out elsewhere
            stream.wait_event(self._replayed)
        for dst, src in zip(static_in, inputs):
            dst.copy_(src)
        graph.replay()
        # the outputs live in the graph's pool and are overwritten by the next replay
        out = tuple(o.clone() for o in static_out) if isinstance(static_out, tuple) else static_out.clone()
        self._replayed = torch.cuda.Event()
        self._replayed.record(stream)
        return out

    def _capture(self, inputs):
        import torch

        static_in = tuple(x.clone() for x in inputs)
        caller_stream = torch.cuda.current_stream(self.device)
        try:
            with _CAPTURE_LOCK:
                side = torch.cuda.Stream(self.device)
                side.wait_stream(caller_stream)
                with torch.cuda.stream(side):  # warm-up outside the graph (cuDNN autotuning, lazy init)
                    for _ in range(2):
                        self.model(*static_in)
                caller_stream.wait_stream(side)
                if self._graph_pool is None:
                    self._graph_pool = torch.cuda.graph_pool_handle()
                graph = torch.cuda.CUDAGraph()
                # the capture stream made here, on this runner's device (torch's default capture
                # stream is one per process, made on whichever device was current first);
                # thread_local: other workers' CUDA calls (uploads, NMS) must not break this capture
                with torch.cuda.graph(graph, pool=self._graph_pool, stream=side, capture_error_mode="thread_local"):
                    static_out = self.model(*static_in)
        except BaseException as e:
            # when capture_end raises, torch skips restoring the thread's current stream
            torch.cuda.set_stream(caller_stream)
            if not isinstance(e, RuntimeError):
                raise
            self.cuda_graph = False
            self._graphs.clear()
            self.notes.append(f"CUDA graph capture failed, running eagerly: {str(e).splitlines()[0]}")
            return None
        return graph, static_in, static_out, _module_caches(self.model)

    def infer(self, feed: dict) -> dict[str, np.ndarray]:
        import torch

        if not self.active:
            self.activate()
        dtype = torch.float16 if self.fp16 else torch.float32
        fmt = torch.channels_last if self.fp16 else torch.contiguous_format
        with torch.inference_mode(), self._on_device():
            image = torch.as_tensor(feed["image"], device=self.device).to(dtype=dtype, memory_format=fmt)
            if self.is_detector:
                boxes, scores = self._run(image)
                return {"boxes": boxes.float().cpu().numpy(), "scores": scores.float().cpu().numpy()}
            # candidates stay fp32 under fp16: their scores feed the ranker's fp32 score + residual
            cand = torch.as_tensor(feed["boxes"], device=self.device).to(torch.float32)
            return {"scores": self._run(image, cand).float().cpu().numpy()}

    def _on_device(self):
        """The runner's GPU as this thread's current device (per thread in CUDA); a no-op on the CPU."""
        import contextlib

        import torch

        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
