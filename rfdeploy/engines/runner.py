"""Run a TensorRT engine plan: deserialize, pick a profile, bind tensors, execute on a stream.

NOT EXECUTED IN THIS PROJECT'S CI: no GPU that can run these engines is available where the
project is developed (TensorRT-RTX plans refuse Hopper; data-centre TensorRT is not installable
there). The manifest checks and profile selection it relies on (``check_manifest``,
``select_profile``) are tested; the execution path below follows NVIDIA's documented name-based
pattern (``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``) and is kept small.

With torch and CUDA available, tensors live in torch CUDA memory; without torch the CUDA runtime
from ``cuda.bindings`` allocates and copies.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rfdeploy.engines.backend import BuilderBackend, collecting_logger, current_gpu
from rfdeploy.engines.manifest import Manifest, check_manifest, load_manifest
from rfdeploy.engines.profiles import select_profile
from rfdeploy.errors import BackendUnavailableError, EngineMismatchError, InputError


def parse_device(device: str) -> int:
    m = re.fullmatch(r"cuda(?::(\d+))?", device.strip())
    if not m:
        raise InputError(f"TensorRT runs on a CUDA device; got device {device!r}", hint="use cuda or cuda:N")
    return int(m.group(1) or 0)


def check_feed(manifest: Manifest, feed: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Input names must match the engine's exactly; returns the fed shapes."""
    want = [t.name for t in manifest.inputs]
    if sorted(feed) != sorted(want):
        raise InputError(f"the engine takes inputs {want}, got {sorted(feed)}")
    return {n: tuple(int(d) for d in feed[n].shape) for n in want}


class _CudaRT:
    """The few CUDA runtime calls the torch-free path needs; errors become exceptions."""

    def __init__(self):
        from cuda.bindings import runtime

        self.rt = runtime

    def call(self, fn, *args):
        out = fn(*args)
        err, rest = out[0], out[1:]
        if int(err) != 0:
            raise BackendUnavailableError(f"CUDA runtime call {fn.__name__} failed: {err}")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else rest


class TensorRTRunner:
    """``with TensorRTRunner("m.engine") as r: out = r.infer({"input": x})``."""

    def __init__(self, engine_path: str | Path, device: str = "cuda:0"):
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise InputError(f"engine file not found: {self.engine_path}")
        self.device_index = parse_device(device)
        self.manifest = load_manifest(self.engine_path)
        self._engine = self._context = self._stream = None
        self._profile: int | None = None
        self._torch = None
        self._cuda: _CudaRT | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def activate(self) -> "TensorRTRunner":
        backend = BuilderBackend.load(self.manifest.backend)
        gpu = current_gpu(self.device_index)
        if gpu is None:
            raise BackendUnavailableError(f"no CUDA GPU #{self.device_index} is visible; TensorRT engines need one")
        check_manifest(
            self.manifest, self.engine_path, runtime_backend_name=backend.name,
            runtime_version=backend.version, gpu_cc=gpu["compute_capability"],
        )
        trt = self._trt = backend.module
        try:
            import torch

            self._torch = torch if torch.cuda.is_available() else None
        except ImportError:
            self._torch = None
        if self._torch is not None:
            self._torch.cuda.set_device(self.device_index)
            self._stream = self._torch.cuda.Stream()
        else:
            self._cuda = _CudaRT()
            self._cuda.call(self._cuda.rt.cudaSetDevice, self.device_index)
            self._stream = self._cuda.call(self._cuda.rt.cudaStreamCreate)
        self._logger = collecting_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            raise EngineMismatchError(
                f"{backend.name} could not deserialize {self.engine_path}: " + "; ".join(self._logger.errors[-3:]),
                hint=f"rebuild it: {self.manifest.rebuild_command_str}",
            )
        self._context = self._engine.create_execution_context()
        self._profile = None
        return self

    def deactivate(self) -> None:
        self._context = None
        self._engine = None
        if self._cuda is not None and self._stream is not None:
            self._cuda.rt.cudaStreamDestroy(self._stream)
        self._stream = None

    def __enter__(self) -> "TensorRTRunner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- inference -----------------------------------------------------------------------------
    def _stream_handle(self) -> int:
        return self._stream.cuda_stream if self._torch is not None else int(self._stream)

    def infer(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        """Outputs are torch CUDA tensors when the inputs were torch tensors, else numpy arrays."""
        if self._context is None:
            raise RuntimeError("call activate() (or use the runner as a context manager) first")
        shapes = check_feed(self.manifest, feed)
        profile = select_profile(self.manifest.profiles, shapes)
        stream = self._stream_handle()
        if profile != self._profile:
            self._context.set_optimization_profile_async(profile, stream)
            self._profile = profile
        as_torch = self._torch is not None and any(isinstance(v, self._torch.Tensor) for v in feed.values())
        if self._torch is not None:
            return self._infer_torch(feed, stream, as_torch)
        return self._infer_cudart(feed, stream)

    def _infer_torch(self, feed, stream: int, as_torch: bool) -> dict[str, Any]:
        torch, trt, ctx, eng = self._torch, self._trt, self._context, self._engine
        dev = torch.device("cuda", self.device_index)
        keep = []
        for t in self.manifest.inputs:
            want = torch.from_numpy(np.empty(0, dtype=trt.nptype(eng.get_tensor_dtype(t.name)))).dtype
            x = feed[t.name]
            x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
            x = x.to(device=dev, dtype=want).contiguous()
            keep.append(x)
            ctx.set_input_shape(t.name, tuple(x.shape))
            ctx.set_tensor_address(t.name, x.data_ptr())
        outs = {}
        for t in self.manifest.outputs:
            shape = tuple(ctx.get_tensor_shape(t.name))
            dt = torch.from_numpy(np.empty(0, dtype=trt.nptype(eng.get_tensor_dtype(t.name)))).dtype
            outs[t.name] = torch.empty(shape, dtype=dt, device=dev)
            ctx.set_tensor_address(t.name, outs[t.name].data_ptr())
        if not ctx.execute_async_v3(stream):
            raise BackendUnavailableError("TensorRT execute_async_v3 failed: " + "; ".join(self._logger.errors[-3:]))
        self._stream.synchronize()
        return outs if as_torch else {k: v.cpu().numpy() for k, v in outs.items()}

    def _infer_cudart(self, feed, stream: int) -> dict[str, np.ndarray]:
        cu, rt, trt, ctx, eng = self._cuda, self._cuda.rt, self._trt, self._context, self._engine
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        ptrs = []
        try:
            for t in self.manifest.inputs:
                x = np.ascontiguousarray(feed[t.name], dtype=trt.nptype(eng.get_tensor_dtype(t.name)))
                p = cu.call(rt.cudaMalloc, max(x.nbytes, 1))
                ptrs.append(p)
                cu.call(rt.cudaMemcpyAsync, p, x.ctypes.data, x.nbytes, h2d, stream)
                ctx.set_input_shape(t.name, x.shape)
                ctx.set_tensor_address(t.name, int(p))
            host = {}
            for t in self.manifest.outputs:
                arr = np.empty(tuple(ctx.get_tensor_shape(t.name)), dtype=trt.nptype(eng.get_tensor_dtype(t.name)))
                p = cu.call(rt.cudaMalloc, max(arr.nbytes, 1))
                ptrs.append(p)
                host[t.name] = (arr, p)
                ctx.set_tensor_address(t.name, int(p))
            if not ctx.execute_async_v3(stream):
                raise BackendUnavailableError("TensorRT execute_async_v3 failed: " + "; ".join(self._logger.errors[-3:]))
            for arr, p in host.values():
                cu.call(rt.cudaMemcpyAsync, arr.ctypes.data, p, arr.nbytes, d2h, stream)
            cu.call(rt.cudaStreamSynchronize, stream)
            return {k: arr for k, (arr, _) in host.items()}
        finally:
            for p in ptrs:
                rt.cudaFree(p)

