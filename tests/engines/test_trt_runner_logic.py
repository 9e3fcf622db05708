"""The TensorRT runner's own logic: binding by the engine's I/O, checked return values, profile
switches, one lock across worker threads, the current device set in every calling thread, stream
order, and pinned staging buffers allocated once and reused.

FAKES: nothing here runs TensorRT. ``FakeEngine``/``FakeContext`` stand in for TensorRT's engine
and execution context, and ``FakeCudaRuntime`` for ``cuda.bindings.runtime`` with host memory as
"device" memory; the fake context really reads its inputs at the bound addresses and writes its
outputs there, so wrong addresses, interleaved bindings or missing copies give wrong numbers. The
fakes define exactly the calls the runner may make (anything else is an AttributeError), and
``test_every_name_the_runner_uses_exists_in_the_installed_releases`` checks each of those names on
the real ``tensorrt_rtx`` / ``tensorrt`` and ``cuda.bindings`` classes. The CUDA tests at the end
run the torch memory path with the same fake context on a real GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import hashlib
import threading
import time

import numpy as np
import pytest

from rfdeploy.core.errors import BackendUnavailableError, EngineMismatchError
from rfdeploy.engines.manifest import IOTensor, Manifest
from rfdeploy.engines.profiles import Profile, ShapeRange
from rfdeploy.engines.runner import TensorRTRunner, _CudartMemory, _TorchMemory, engine_io

K = 3  # candidates per image of the fake network


class FakeTrt:
    """The module-level names the runner reads from a TensorRT module."""

    class TensorIOMode(enum.Enum):
        INPUT = 1
        OUTPUT = 2

    class DataType(enum.Enum):
        FLOAT = 0
        HALF = 1

    @staticmethod
    def nptype(dt):
        return {FakeTrt.DataType.FLOAT: np.float32, FakeTrt.DataType.HALF: np.float16}[dt]


class FakeLogger:
    errors: list[str] = []


def host_view(ptr: int, shape, dtype) -> np.ndarray:
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_char * n).from_address(ptr), dtype=dtype).reshape(shape)


def fake_network(x):
    """image [B,3,H,W] -> boxes [B,K,4] = (H, W, b, k), scores [B,K] = mean(image[b]) + k."""
    b, _, h, w = x.shape
    mean = x.reshape(b, -1).mean(1)
    scores = mean[:, None] + np.arange(K, dtype=np.float32)[None]
    boxes = np.zeros((b, K, 4), np.float32)
    boxes[..., 0], boxes[..., 1] = h, w
    boxes[..., 2] = np.arange(b)[:, None]
    boxes[..., 3] = np.arange(K)[None]
    return boxes, scores.astype(np.float32)


class FakeContext:
    """An IExecutionContext in miniature. ``real_profiles``: what the engine really admits (may be
    narrower than its manifest claims). ``pause``: seconds slept inside each binding call, to let
    other threads in if nothing keeps them out. ``races`` counts executions whose bindings were not
    all made by the executing thread since its previous execution."""

    def __init__(self, engine):
        self.engine = engine
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.owner: dict[str, int] = {}
        self.profile = 0
        self.calls: list[tuple[int, str]] = []
        self.races = 0

    def _note(self, what: str, name: str | None = None):
        self.calls.append((threading.get_ident(), what))
        if name is not None:
            self.owner[name] = threading.get_ident()
        time.sleep(self.engine.pause)

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        self._note("profile")
        if self.engine.profile_error:
            raise RuntimeError("profile switch failed")
        if not 0 <= index < len(self.engine.real_profiles):
            return False
        self.profile = index
        return True

    def set_input_shape(self, name: str, shape) -> bool:
        self._note("shape", name)
        lo, hi = self.engine.real_profiles[self.profile]
        if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self._note("address", name + "@")
        self.addresses[name] = int(ptr)
        return True

    def infer_shapes(self) -> list[str]:
        return [n for n in self.engine.inputs if n not in self.shapes]

    def get_tensor_shape(self, name: str):
        b = self.shapes["image"][0]
        return {"boxes": (b, K, 4), "scores": (b, K)}[name]

    def execute_async_v3(self, stream: int) -> bool:
        me = threading.get_ident()
        names = list(self.engine.inputs) + [n + "@" for n in self.engine.inputs + self.engine.outputs]
        if any(self.owner.get(n) != me for n in names):
            self.races += 1
        self.owner.clear()
        self.calls.append((me, "execute"))
        if self.engine.execute_fails:
            return False
        self.engine.run(self, stream)
        return True


class FakeEngine:
    """An ICudaEngine in miniature: one input ``image``, outputs ``boxes`` and ``scores``."""

    def __init__(self, real_profiles, extra_input: str | None = None, pause: float = 0.0):
        self.inputs = ["image"] + ([extra_input] if extra_input else [])
        self.outputs = ["boxes", "scores"]
        self.real_profiles = real_profiles
        self.pause = pause
        self.profile_error = False
        self.execute_fails = False
        self.contexts: list[FakeContext] = []

    @property
    def num_io_tensors(self) -> int:
        return len(self.inputs) + len(self.outputs)

    def get_tensor_name(self, i: int) -> str:
        return (self.inputs + self.outputs)[i]

    def get_tensor_mode(self, name: str):
        return FakeTrt.TensorIOMode.INPUT if name in self.inputs else FakeTrt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str):
        return FakeTrt.DataType.FLOAT

    def create_execution_context(self) -> FakeContext:
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]

    def run(self, ctx: FakeContext, stream: int) -> None:
        """The network, on host memory at the bound addresses."""
        x = host_view(ctx.addresses["image"], ctx.shapes["image"], np.float32)
        boxes, scores = fake_network(x)
        host_view(ctx.addresses["boxes"], boxes.shape, np.float32)[:] = boxes
        host_view(ctx.addresses["scores"], scores.shape, np.float32)[:] = scores


class FakeCudaRuntime:
    """``cuda.bindings.runtime`` in host memory: calls return ``(error, value...)`` tuples as the
    real bindings do; the current device is per thread, as in CUDA."""

    class cudaMemcpyKind(enum.Enum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self):
        self.device_mem: dict[int, ctypes.Array] = {}
        self.pinned_mem: dict[int, ctypes.Array] = {}
        self.mallocs = 0
        self.streams: set[int] = set()
        self.wrong_device = 0
        self.graveyard: list = []
        self._local = threading.local()
        self.want_device = None

    def _check_device(self):
        if getattr(self._local, "device", 0) != self.want_device:
            self.wrong_device += 1

    def cudaSetDevice(self, i):
        self._local.device = i
        return (0,)

    def cudaMalloc(self, n):
        self.mallocs += 1
        buf = ctypes.create_string_buffer(n)
        self.device_mem[ctypes.addressof(buf)] = buf
        return (0, ctypes.addressof(buf))

    def cudaMallocHost(self, n):
        buf = ctypes.create_string_buffer(n)
        self.pinned_mem[ctypes.addressof(buf)] = buf
        return (0, ctypes.addressof(buf))

    def _release(self, pool, p):
        buf = pool.pop(int(p), None)
        if buf is None:
            return (1,)
        self.graveyard.append(buf)  # kept alive: a stray late access must not touch freed memory
        return (0,)

    def cudaFree(self, p):
        return self._release(self.device_mem, p)

    def cudaFreeHost(self, p):
        return self._release(self.pinned_mem, p)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        self._check_device()
        h2d = kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice
        dev, host = (dst, src) if h2d else (src, dst)
        if int(dev) not in self.device_mem or int(host) not in self.pinned_mem or stream not in self.streams:
            return (2,)  # staging buffers must be pinned; copies go on the runner's stream
        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaStreamCreate(self):
        self.streams.add(77)
        return (0, 77)

    def cudaStreamSynchronize(self, s):
        return (0,)

    def cudaStreamDestroy(self, s):
        self.streams.discard(s)
        return (0,)


def _manifest(profiles, inputs=("image",)) -> Manifest:
    return Manifest(
        backend="tensorrt_rtx", backend_version="0", compute_capabilities=(), build_gpu="unknown",
        precision="fp32", profiles=tuple(profiles),
        inputs=tuple(IOTensor(n, (-1, 3, -1, -1), "float32") for n in inputs),
        outputs=(IOTensor("boxes", (-1, K, 4), "float32"), IOTensor("scores", (-1, K), "float32")),
        plan_sha256="0" * 64, onnx_sha256="0" * 64, onnx_file="fake.onnx", rfdeploy_version="0",
        metadata={}, rebuild_command=("rfdeploy", "build-engine", "fake.onnx"),
    )


TILES = Profile({"image": ShapeRange((1, 3, 32, 32), (4, 3, 64, 64), (8, 3, 64, 64))}, "tiles")
WHOLE = Profile({"image": ShapeRange((1, 3, 32, 32), (1, 3, 96, 128), (1, 3, 128, 128))}, "whole")


def _runner(tmp_path, engine, profiles=(TILES,), device="cuda:1", manifest_inputs=("image",)):
    plan = tmp_path / "fake.engine"
    plan.write_bytes(b"not a real plan")
    m = _manifest(profiles, manifest_inputs)
    m = Manifest(**{**m.__dict__, "plan_sha256": hashlib.sha256(plan.read_bytes()).hexdigest()})
    m.write(plan)
    r = TensorRTRunner(plan, device=device)
    rt = FakeCudaRuntime()
    rt.want_device = r.device_index
    r.attach(FakeTrt, engine, _CudartMemory(r.device_index, runtime=rt), FakeLogger())
    return r, rt


def _image(b, h, w, value):
    return np.full((b, 3, h, w), value, np.float32)


def _expect(out, x):
    boxes, scores = fake_network(x)
    np.testing.assert_array_equal(out["scores"], scores)
    np.testing.assert_array_equal(out["boxes"], boxes)


def test_outputs_come_back_through_pinned_buffers_reused_while_they_fit(tmp_path):
    engine = FakeEngine([((1, 3, 32, 32), (8, 3, 64, 64))])
    r, rt = _runner(tmp_path, engine)
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    _expect(r.infer({"image": x}), x)
    assert rt.mallocs == 3 and len(rt.pinned_mem) == 3  # image, boxes, scores: device + pinned host
    _expect(r.infer({"image": x + 1}), x + 1)
    _expect(r.infer({"image": x[:2, :, :32, :48]}), x[:2, :, :32, :48])  # smaller: same buffers
    assert rt.mallocs == 3
    big = _image(8, 64, 64, 2.5)
    _expect(r.infer({"image": big}), big)  # larger: reallocated once, the old ones freed
    assert rt.mallocs == 6 and len(rt.device_mem) == 3 and len(rt.pinned_mem) == 3
    assert rt.wrong_device == 0
    # a float64 array is cast to the engine's float32 on the way in
    _expect(r.infer({"image": x.astype(np.float64)}), x)
    r.deactivate()
    assert not rt.device_mem and not rt.pinned_mem and not rt.streams


def test_profiles_are_switched_only_when_the_shape_needs_another(tmp_path):
    engine = FakeEngine([((1, 3, 32, 32), (8, 3, 64, 64)), ((1, 3, 32, 32), (1, 3, 128, 128))])
    r, _ = _runner(tmp_path, engine, profiles=(TILES, WHOLE))
    ctx = engine.contexts[0]
    for shape in [(4, 3, 64, 64), (2, 3, 64, 64), (1, 3, 128, 96), (1, 3, 100, 128), (3, 3, 48, 64)]:
        x = _image(*shape[:1], *shape[2:], value=1.0)
        _expect(r.infer({"image": x}), x)
    assert [c for _, c in ctx.calls].count("profile") == 3  # tiles, whole, tiles
    assert ctx.profile == 0


def test_engine_io_must_match_the_manifest(tmp_path):
    engine = FakeEngine([((1, 3, 32, 32), (8, 3, 64, 64))], extra_input="boxes_in")
    with pytest.raises(EngineMismatchError, match="boxes_in") as e:
        _runner(tmp_path, engine)
    assert e.value.exit_code == 4 and "rfdeploy build-engine fake.onnx" in e.value.hint
    m = _manifest([TILES])
    assert engine_io(FakeTrt, FakeEngine([((1, 3, 32, 32), (8, 3, 64, 64))]), m, "x") == (["image"], ["boxes", "scores"])


def test_refused_shape_profile_and_execution_are_clear_errors(tmp_path):
    # the manifest claims batches up to 8; the plan really stops at 2
    engine = FakeEngine([((1, 3, 32, 32), (2, 3, 64, 64))])
    r, _ = _runner(tmp_path, engine)
    with pytest.raises(EngineMismatchError, match=r"input image 4x3x64x64 is outside optimization profile #0") as e:
        r.infer({"image": _image(4, 64, 64, 0.0)})
    assert "rebuild it: rfdeploy build-engine" in str(e.value)
    ok = _image(2, 64, 64, 3.0)
    _expect(r.infer({"image": ok}), ok)  # the runner is still usable after a refused call
    engine.execute_fails = True
    with pytest.raises(BackendUnavailableError, match="execute_async_v3 failed"):
        r.infer({"image": ok})
    engine.execute_fails = False
    r2, _ = _runner(tmp_path, FakeEngine([((1, 3, 32, 32), (8, 3, 64, 64))]))
    r2._engine.profile_error = True
    with pytest.raises(EngineMismatchError, match="cannot select optimization profile #0: profile switch failed"):
        r2.infer({"image": ok})
    # a shape outside every profile of the manifest never reaches the context
    with pytest.raises(EngineMismatchError, match="outside every profile"):
        r.infer({"image": _image(9, 64, 64, 0.0)})


def _hammer(r, threads: int, calls: int):
    """Each thread feeds its own values; returns (wrong results, exceptions)."""
    wrong, errors = [], []
    start = threading.Barrier(threads)

    def work(i):
        start.wait()
        for c in range(calls):
            x = _image(1 + (i + c) % 3, 32, 32 + 16 * (i % 2), float(100 * i + c))
            try:
                out = r.infer({"image": x})
                boxes, scores = fake_network(x)
                if out["scores"].shape != scores.shape or not np.allclose(out["scores"], scores, atol=1e-3):
                    wrong.append((i, c))
            except Exception as e:  # noqa: BLE001 - collected for the assertion
                errors.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return wrong, errors


def test_worker_threads_never_interleave_on_the_context(tmp_path):
    engine = FakeEngine([((1, 3, 32, 32), (8, 3, 64, 64))], pause=0.0005)
    r, rt = _runner(tmp_path, engine)
    wrong, errors = _hammer(r, threads=4, calls=12)
    assert not errors and not wrong and engine.contexts[0].races == 0
    assert rt.wrong_device == 0  # every thread set the runner's device before its copies
    # the same workload with the lock taken away: the fake sees it (so the check above can fail)
    r._lock = contextlib.nullcontext()
    wrong, errors = _hammer(r, threads=4, calls=12)
    assert engine.contexts[0].races > 0 or wrong or errors


def test_every_name_the_runner_uses_exists_in_the_installed_releases(trt_backend):
    """Names drift between TensorRT releases: every method and attribute the fakes above define
    (the only ones the runner can call) must exist on the real classes, with that name."""
    import importlib

    trt = importlib.import_module(trt_backend)
    public = lambda cls: {n for n in vars(cls) if not n.startswith("_")}  # noqa: E731
    for fake, real in [(FakeEngine, trt.ICudaEngine), (FakeContext, trt.IExecutionContext)]:
        ours = public(fake) - {"run", "pause", "real_profiles", "profile_error", "execute_fails"}
        missing = sorted(n for n in ours if not hasattr(real, n))
        assert not missing, f"{real.__name__} lacks {missing}"
    assert {m.name for m in FakeTrt.TensorIOMode} <= set(trt.TensorIOMode.__members__)
    assert trt.nptype(trt.DataType.FLOAT) is np.float32 and trt.nptype(trt.DataType.HALF) is np.float16
    assert hasattr(trt, "Runtime") and hasattr(trt.Runtime, "deserialize_cuda_engine")
    assert hasattr(trt, "ILogger") and {"ERROR", "WARNING", "INTERNAL_ERROR"} <= set(trt.ILogger.Severity.__members__)
    cudart = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python not installed")
    ours = {n for n in vars(FakeCudaRuntime) if n.startswith("cuda")}
    assert not sorted(n for n in ours if not hasattr(cudart, n))
    assert {m.name for m in FakeCudaRuntime.cudaMemcpyKind} <= set(cudart.cudaMemcpyKind.__members__)


# --- the torch memory path, on a real GPU with the fake context -------------------------------

def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (none on this machine)")
    return torch


class CudaFakeEngine(FakeEngine):
    """The same fake network on GPU memory, enqueued on the stream TensorRT would be given."""

    def run(self, ctx, stream):
        import torch

        def view(name, shape):
            class Mem:
                __cuda_array_interface__ = {"shape": tuple(shape), "typestr": "<f4", "version": 2,
                                            "data": (ctx.addresses[name], False), "strides": None}
            return torch.as_tensor(Mem(), device="cuda")

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            x = view("image", ctx.shapes["image"])
            b = x.shape[0]
            mean = x.reshape(b, -1).mean(1)
            view("scores", (b, K)).copy_(mean[:, None] + torch.arange(K, device="cuda", dtype=torch.float32))
            boxes = view("boxes", (b, K, 4))
            boxes[..., 0], boxes[..., 1] = x.shape[2], x.shape[3]
            boxes[..., 2] = torch.arange(b, device="cuda", dtype=torch.float32)[:, None]
            boxes[..., 3] = torch.arange(K, device="cuda", dtype=torch.float32)[None]


def _torch_runner(tmp_path, torch):
    engine = CudaFakeEngine([((1, 3, 32, 32), (8, 3, 64, 64))])
    plan = tmp_path / "fake.engine"
    plan.write_bytes(b"not a real plan")
    m = _manifest([TILES])
    Manifest(**{**m.__dict__, "plan_sha256": hashlib.sha256(plan.read_bytes()).hexdigest()}).write(plan)
    r = TensorRTRunner(plan, device="cuda:0")
    return r.attach(FakeTrt, engine, _TorchMemory(torch, 0), FakeLogger()), engine


def test_torch_memory_takes_device_tensors_and_waits_for_the_current_stream(tmp_path):
    torch = _torch_cuda()
    r, _ = _torch_runner(tmp_path, torch)
    x = torch.zeros((4, 3, 64, 64), device="cuda")
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)  # a long kernel on the current stream ...
    x.add_(5.0)  # ... before the input is ready: the engine's stream must wait for both
    out = r.infer({"image": x})
    assert isinstance(out["scores"], torch.Tensor) and out["scores"].device.type == "cuda"
    expect = torch.tensor([5.0, 6.0, 7.0], device="cuda").expand(4, K)
    torch.testing.assert_close(out["scores"], expect)
    host = r.infer({"image": np.full((2, 3, 32, 32), 1.5, np.float32)})  # numpy in: numpy out
    assert isinstance(host["scores"], np.ndarray)
    np.testing.assert_allclose(host["scores"], [[1.5, 2.5, 3.5]] * 2)


def test_torch_memory_under_worker_threads(tmp_path):
    torch = _torch_cuda()
    r, engine = _torch_runner(tmp_path, torch)
    engine.pause = 0.0005
    wrong, errors = _hammer(r, threads=4, calls=8)
    assert not errors and not wrong and engine.contexts[0].races == 0


def test_backend_runner_takes_device_tensors_only_where_torch_has_cuda(tmp_path):
    """The pipeline feeds TrtRunner device tensors (GPU pre-processing) when it says it takes them."""
    torch = pytest.importorskip("torch")
    from rfdeploy.runtime.backends.trt_runner import TrtRunner

    plan = tmp_path / "fake.engine"
    plan.write_bytes(b"not a real plan")
    _manifest([TILES]).write(plan)
    r = TrtRunner(plan, device="cuda:0")
    assert r.accepts_torch == torch.cuda.is_available()
    if torch.cuda.is_available():
        assert r.device == torch.device("cuda", 0)
    else:
        assert r.device == "cuda:0"
