"""Run a TensorRT engine plan: deserialize, pick a profile, bind tensors, execute on a stream.

NOT EXECUTED ON A GPU IN THIS PROJECT'S CI: no GPU that can run these engines is available where
the project is developed (TensorRT-RTX plans refuse Hopper; data-centre TensorRT is not
installable there). What runs there: the manifest checks and profile selection, and the whole
binding/execution logic below against a fake engine and context in host memory (locking, order
of calls, checked return values, buffer reuse); ``tests/engines/test_trt_runner_logic.py`` also
checks that every TensorRT and CUDA runtime name used here exists in the installed releases.

Memory: with torch and CUDA available, tensors live in torch CUDA memory (device tensors are
taken as they are, so GPU pre-processing feeds the engine without a host round trip); without
torch the CUDA runtime from ``cuda.bindings`` allocates device and pinned host buffers once per
tensor and reuses them while the size fits.

Threads: one execution context per runner, used under a lock from binding to the end of the
execution. A context per thread would multiply the activation memory by the number of workers for
no gain: the GPU is the shared resource, and the other workers' decoding and host steps still run
while one batch executes.
"""

from __future__ import annotations

import ctypes
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from rfdeploy.core.errors import BackendUnavailableError, EngineMismatchError, InputError
from rfdeploy.engines.backend import BuilderBackend, collecting_logger, current_gpu
from rfdeploy.engines.manifest import Manifest, check_manifest, load_manifest
from rfdeploy.engines.profiles import format_shape, select_profile


def parse_device(device: str) -> int:
    m = re.fullmatch(r"cuda(?::(\d+))?", str(device).strip())
    if not m:
        raise InputError(f"TensorRT runs on a CUDA device; got device {device!r}", hint="use cuda or cuda:N")
    return int(m.group(1) or 0)


def check_feed(manifest: Manifest, feed: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Input names must match the engine's exactly; returns the fed shapes."""
    want = [t.name for t in manifest.inputs]
    if sorted(feed) != sorted(want):
        raise InputError(f"the engine takes inputs {want}, got {sorted(feed)}")
    return {n: tuple(int(d) for d in feed[n].shape) for n in want}


def engine_io(trt, engine, manifest: Manifest, engine_path) -> tuple[list[str], list[str]]:
    """The engine's own input and output tensor names, which must be the manifest's: a tensor left
    unbound would otherwise only show as ``execute_async_v3`` returning False."""
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(name)
    want_in, want_out = [t.name for t in manifest.inputs], [t.name for t in manifest.outputs]
    if sorted(inputs) != sorted(want_in) or sorted(outputs) != sorted(want_out):
        raise EngineMismatchError(
            f"{engine_path}: the engine's tensors (inputs {inputs}, outputs {outputs}) are not its manifest's "
            f"(inputs {want_in}, outputs {want_out}); the plan and its manifest do not belong together",
            hint=f"rebuild it: {manifest.rebuild_command_str}",
        )
    return inputs, outputs


class _CudaRT:
    """The few CUDA runtime calls the torch-free path needs; errors become exceptions."""

    def __init__(self, runtime=None):
        if runtime is None:
            try:
                from cuda.bindings import runtime
            except ImportError as e:
                raise BackendUnavailableError(
                    f"TensorRT without torch needs the CUDA runtime bindings ({e})", hint="pip install cuda-python"
                ) from None
        self.rt = runtime

    def call(self, fn, *args):
        out = fn(*args)
        err, rest = out[0], out[1:]
        if int(err) != 0:
            raise BackendUnavailableError(f"CUDA runtime call {getattr(fn, '__name__', fn)} failed: {err}")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else rest


class _TorchMemory:
    """Tensors in torch CUDA memory on the runner's own stream, ordered after torch's current
    stream (where the caller's copies, casts and ``.contiguous()`` were queued)."""

    def __init__(self, torch, index: int):
        self.torch = torch
        self.index = index
        self.dev = torch.device("cuda", index)
        with torch.cuda.device(index):
            self.stream = torch.cuda.Stream(self.dev)
        self._keep: list = []
        self._outs: dict = {}

    def current(self):
        """Sets this thread's current device (per thread in CUDA) for the duration of a call."""
        return self.torch.cuda.device(self.index)

    def handle(self) -> int:
        return self.stream.cuda_stream

    def torch_dtype(self, np_dtype):
        return self.torch.from_numpy(np.empty(0, dtype=np_dtype)).dtype

    def input(self, name: str, x, np_dtype) -> tuple[tuple[int, ...], int]:
        torch = self.torch
        x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
        x = x.to(device=self.dev, dtype=self.torch_dtype(np_dtype)).contiguous()
        self._keep.append(x)
        return tuple(x.shape), x.data_ptr()

    def output(self, name: str, shape, np_dtype) -> int:
        t = self.torch.empty(shape, dtype=self.torch_dtype(np_dtype), device=self.dev)
        self._outs[name] = t
        return t.data_ptr()

    def execute(self, enqueue: Callable[[int], None]) -> None:
        self.stream.wait_stream(self.torch.cuda.current_stream(self.dev))
        enqueue(self.handle())
        # inputs may be freed and outputs read (on any stream) only once the engine is done
        self.stream.synchronize()

    def results(self, as_torch: bool) -> dict:
        outs, self._outs, self._keep = self._outs, {}, []
        return outs if as_torch else {k: v.cpu().numpy() for k, v in outs.items()}

    def reset(self) -> None:
        """Drop one call's tensors after a failed call, once the stream is idle; a broken stream
        must not hide the error being raised."""
        try:
            self.stream.synchronize()
        except RuntimeError:
            pass
        self._keep, self._outs = [], {}

    def close(self) -> None:
        self._keep, self._outs = [], {}


class _Buffer:
    """One tensor's device buffer and its pinned host twin, reused while the size fits."""

    def __init__(self, nbytes: int, device_ptr: int, host_ptr: int):
        self.nbytes, self.device, self.host = nbytes, int(device_ptr), int(host_ptr)

    def host_array(self, shape, dtype) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        raw = np.frombuffer((ctypes.c_char * self.nbytes).from_address(self.host), dtype=np.uint8)
        return raw[:n].view(dtype).reshape(shape)


class _CudartMemory:
    """Without torch: CUDA runtime allocations and copies on one stream; host staging buffers are
    pinned, so the copies are truly asynchronous."""

    def __init__(self, index: int, runtime=None):
        self.cu = _CudaRT(runtime)
        self.rt = self.cu.rt
        self.index = index
        self.cu.call(self.rt.cudaSetDevice, index)
        self.stream = self.cu.call(self.rt.cudaStreamCreate)
        self._buffers: dict[str, _Buffer] = {}
        self._outs: dict[str, tuple[_Buffer, tuple[int, ...], Any]] = {}

    @contextmanager
    def current(self):
        self.cu.call(self.rt.cudaSetDevice, self.index)
        yield

    def handle(self) -> int:
        return int(self.stream)

    def _buffer(self, name: str, nbytes: int) -> _Buffer:
        nbytes = max(int(nbytes), 1)
        buf = self._buffers.get(name)
        if buf is not None and buf.nbytes >= nbytes:
            return buf
        if buf is not None:
            self._free(buf)
            del self._buffers[name]
        dptr = self.cu.call(self.rt.cudaMalloc, nbytes)
        try:
            hptr = self.cu.call(self.rt.cudaMallocHost, nbytes)
        except BackendUnavailableError:
            self.rt.cudaFree(dptr)
            raise
        buf = self._buffers[name] = _Buffer(nbytes, dptr, hptr)
        return buf

    def input(self, name: str, x, np_dtype) -> tuple[tuple[int, ...], int]:
        x = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
        buf = self._buffer(name, x.size * np.dtype(np_dtype).itemsize)
        host = buf.host_array(x.shape, np_dtype)
        np.copyto(host, x, casting="same_kind" if x.dtype.kind == np.dtype(np_dtype).kind else "unsafe")
        self.cu.call(self.rt.cudaMemcpyAsync, buf.device, buf.host, host.nbytes,
                     self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream)
        return tuple(x.shape), buf.device

    def output(self, name: str, shape, np_dtype) -> int:
        buf = self._buffer(name, int(np.prod(shape, dtype=np.int64)) * np.dtype(np_dtype).itemsize)
        self._outs[name] = (buf, tuple(shape), np_dtype)
        return buf.device

    def execute(self, enqueue: Callable[[int], None]) -> None:
        enqueue(self.handle())
        for buf, shape, dt in self._outs.values():
            n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
            self.cu.call(self.rt.cudaMemcpyAsync, buf.host, buf.device, n,
                         self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream)
        self.cu.call(self.rt.cudaStreamSynchronize, self.stream)

    def results(self, as_torch: bool) -> dict:
        outs, self._outs = self._outs, {}
        # copies: the staging buffers are reused by the next call
        return {k: buf.host_array(shape, dt).copy() for k, (buf, shape, dt) in outs.items()}

    def reset(self) -> None:
        self.rt.cudaStreamSynchronize(self.stream)  # its error status is ignored on purpose
        self._outs = {}

    def _free(self, buf: _Buffer) -> None:
        self.rt.cudaFree(buf.device)
        self.rt.cudaFreeHost(buf.host)

    def close(self) -> None:
        for buf in self._buffers.values():
            self._free(buf)
        self._buffers.clear()
        self._outs = {}
        self.rt.cudaStreamDestroy(self.stream)


class TensorRTRunner:
    """``with TensorRTRunner("m.engine") as r: out = r.infer({"input": x})``. Safe to share between
    threads (calls are serialised on the one execution context, see the module docstring)."""

    def __init__(self, engine_path: str | Path, device: str = "cuda:0"):
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise InputError(f"engine file not found: {self.engine_path}")
        self.device_index = parse_device(device)
        self.manifest = load_manifest(self.engine_path)
        self._engine = self._context = self._mem = None
        self._profile: int | None = None
        self._lock = threading.Lock()

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
        trt = backend.module
        try:
            import torch

            torch = torch if torch.cuda.is_available() else None
        except ImportError:
            torch = None
        mem = _TorchMemory(torch, self.device_index) if torch is not None else _CudartMemory(self.device_index)
        try:
            with mem.current():
                logger = collecting_logger(trt)
                self._runtime = trt.Runtime(logger)
                engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
                if engine is None:
                    raise EngineMismatchError(
                        f"{backend.name} could not deserialize {self.engine_path}: " + "; ".join(logger.errors[-3:]),
                        hint=f"rebuild it: {self.manifest.rebuild_command_str}",
                    )
                self.attach(trt, engine, mem, logger)
        except BaseException:
            mem.close()
            raise
        return self

    def attach(self, trt, engine, mem, logger) -> "TensorRTRunner":
        """Bind a deserialized engine and a memory strategy (``_TorchMemory`` / ``_CudartMemory``):
        checks the engine's I/O against the manifest and creates the execution context."""
        self._trt, self._engine, self._mem, self._logger = trt, engine, mem, logger
        self._inputs, self._outputs = engine_io(trt, engine, self.manifest, self.engine_path)
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in self._inputs + self._outputs}
        context = engine.create_execution_context()
        if context is None:
            raise BackendUnavailableError(
                f"TensorRT could not create an execution context for {self.engine_path} "
                "(not enough GPU memory?): " + "; ".join(logger.errors[-3:]))
        self._context = context
        self._profile = None
        return self

    def deactivate(self) -> None:
        with self._lock:
            self._context = None
            self._engine = None
            if self._mem is not None:
                self._mem.close()
            self._mem = None

    def __enter__(self) -> "TensorRTRunner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- inference -----------------------------------------------------------------------------
    def _mismatch(self, what: str) -> EngineMismatchError:
        errors = "; ".join(self._logger.errors[-3:])
        return EngineMismatchError(f"{self.engine_path}: {what}" + (f" ({errors})" if errors else ""),
                                   hint=f"rebuild it: {self.manifest.rebuild_command_str}")

    def infer(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        """Outputs are torch CUDA tensors when an input was a torch tensor (and torch runs the
        memory), else numpy arrays."""
        if self._context is None:
            raise RuntimeError("call activate() (or use the runner as a context manager) first")
        shapes = check_feed(self.manifest, feed)
        profile = select_profile(self.manifest.profiles, shapes)
        as_torch = isinstance(self._mem, _TorchMemory) and any(
            isinstance(v, self._mem.torch.Tensor) for v in feed.values())
        with self._lock:
            if self._context is None:
                raise RuntimeError("the runner was deactivated")
            mem, ctx = self._mem, self._context
            with mem.current():
                try:
                    self._use_profile(profile)
                    for name in self._inputs:
                        shape, ptr = mem.input(name, feed[name], self._dtypes[name])
                        if not ctx.set_input_shape(name, shape):
                            raise self._mismatch(
                                f"input {name} {format_shape(shape)} is outside optimization profile #{profile}")
                        self._address(name, ptr)
                    unset = ctx.infer_shapes()
                    if unset:
                        raise self._mismatch(f"tensors {list(unset)} have no shape after binding every input")
                    for name in self._outputs:
                        shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
                        if any(d < 0 for d in shape):
                            raise self._mismatch(f"output {name} has a data-dependent shape {shape}")
                        self._address(name, mem.output(name, shape, self._dtypes[name]))
                    mem.execute(self._enqueue)
                    return mem.results(as_torch)
                except BaseException:
                    mem.reset()
                    raise

    def _use_profile(self, profile: int) -> None:
        if profile == self._profile:
            return
        try:
            ok = self._context.set_optimization_profile_async(profile, self._mem.handle())
        except RuntimeError as e:
            raise self._mismatch(f"cannot select optimization profile #{profile}: {e}") from None
        if not ok:
            raise self._mismatch(f"cannot select optimization profile #{profile}")
        self._profile = profile

    def _address(self, name: str, ptr: int) -> None:
        if not self._context.set_tensor_address(name, int(ptr)):
            raise self._mismatch(f"TensorRT refused the address of tensor {name}")

    def _enqueue(self, stream: int) -> None:
        if not self._context.execute_async_v3(stream):
            raise BackendUnavailableError("TensorRT execute_async_v3 failed: " + "; ".join(self._logger.errors[-3:]))
