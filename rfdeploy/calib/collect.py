"""Activation ranges for INT8, collected one batch at a time so memory does not grow with the image count.

onnxruntime's histogram calibrators keep the outputs of every calibration batch before they build
their histograms (tens of GB for a detector at 640 px), and their entropy search loops in Python
over every bin. Here the model is run once per batch with the tensors to calibrate as extra
outputs; each tensor updates a fixed-size state and the batch is dropped:

* ``max``: the running minimum and maximum;
* ``percentile`` / ``entropy``: also a signed histogram of ``2 * bins`` bins over ``[-r, r]``. When a
  batch exceeds ``r`` the range doubles (pairs of bins merge), so the bin count never grows.
  Large tensors are histogrammed on a strided sample of at most ``sample_size`` values per batch
  (the offset moves from batch to batch); minimum and maximum always see every value.

Thresholds are taken on the magnitude histogram (|x|): ``percentile`` keeps the given share of
values, ``entropy`` minimises the KL divergence between the clipped distribution and its 128-level
quantization (the legacy TensorRT calibration). A symmetric range is ``(-t, t)``; an asymmetric one
(unsigned activations for the CPU target) is the observed ``(min, max)`` clipped to ``[-t, t]``.

Peak memory is one batch of calibrated tensors plus the fixed state; it is estimated before the
run from two small probe runs and refused (InputError) when it does not fit the budget.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx

from rfdeploy.core.errors import BuildError, InputError, RfdeployError

METHODS = ("max", "entropy", "percentile")
DEFAULT_BINS = 2048  # per side of zero: 4096 signed bins, 2048 magnitude bins (as TensorRT's entropy)
DEFAULT_SAMPLE = 1 << 18
QUANT_LEVELS = 128  # magnitude levels of int8


class RunningHistogram:
    """Signed histogram over ``[-r, r]`` with a fixed number of bins; ``r`` doubles as data demand."""

    def __init__(self, bins: int = DEFAULT_BINS):
        if bins < QUANT_LEVELS or bins % 2:
            raise ValueError(f"bins must be even and >= {QUANT_LEVELS}")
        self.bins = bins
        self.counts = np.zeros(2 * bins, np.int64)
        self.r = 0.0
        self._zeros = 0  # values seen while r == 0 (all exactly zero)

    def _grow(self, amax: float) -> None:
        if self.r == 0.0:
            self.r = float(amax)
            self.counts[self.bins] += self._zeros
            self._zeros = 0
            return
        while self.r < amax:
            merged = self.counts.reshape(self.bins, 2).sum(1)
            self.counts = np.zeros_like(self.counts)
            self.counts[self.bins // 2 : self.bins // 2 + self.bins] = merged
            self.r *= 2.0

    def update(self, values: np.ndarray, amax: float) -> None:
        """Add ``values`` (1-D); ``amax`` is max |values| of the whole tensor (so the range covers it)."""
        if amax > self.r:
            self._grow(amax)
        if self.r == 0.0:
            self._zeros += values.size
            return
        h, _ = np.histogram(values, bins=2 * self.bins, range=(-self.r, self.r))
        self.counts += h

    def magnitude(self) -> tuple[np.ndarray, float]:
        """(counts of |x| over ``bins`` bins on [0, r], bin width)."""
        b = self.bins
        mag = self.counts[b:] + self.counts[:b][::-1]
        mag[0] += self._zeros
        return mag, (self.r / b if self.r else 0.0)


def percentile_threshold(mag: np.ndarray, width: float, percentile: float) -> float:
    """Smallest bin edge below which ``percentile`` % of the magnitudes lie."""
    total = mag.sum()
    if total == 0 or width == 0:
        return 0.0
    cdf = np.cumsum(mag) / total
    idx = int(np.searchsorted(cdf, percentile / 100.0))
    return float(min(idx + 1, len(mag)) * width)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    qs = q.sum()
    if qs == 0:
        return math.inf
    q = q / qs
    m = p > 0
    q = np.where(m & (q == 0), 1e-12, q)  # a level the candidate cannot represent: a large, finite cost
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def entropy_threshold(mag: np.ndarray, width: float, levels: int = QUANT_LEVELS, stride: int = 0) -> float:
    """Threshold minimising KL(reference || quantized) over candidate clip points (TensorRT's legacy
    entropy calibration; vectorised per candidate, onnxruntime's version loops in Python per bin)."""
    n = len(mag)
    if mag.sum() == 0 or width == 0:
        return 0.0
    nonzero = np.nonzero(mag)[0]
    last = int(nonzero[-1]) + 1
    if last <= levels:  # fewer occupied bins than int8 levels: nothing to clip
        return float(last * width)
    stride = stride or max(1, n // 256)
    best, best_i = math.inf, last
    src = mag.astype(np.float64)
    # the exact zeros of ReLU outputs (often most values) would dominate both distributions and
    # favour tiny thresholds: weigh the zero bin like its neighbour, as TensorRT's tools do
    src[0] = src[1]
    for i in list(range(levels, last, stride)) + [last]:
        p = src[:i].copy()
        p[-1] += src[i:].sum()  # the clipped tail lands in the last kept bin
        starts = np.linspace(0, i, levels + 1).round().astype(np.int64)
        lens = np.diff(starts)
        keep = lens > 0
        starts, lens = starts[:-1][keep], lens[keep]
        nz = p != 0
        gsum = np.add.reduceat(src[:i], starts)
        gnz = np.add.reduceat(nz.astype(np.float64), starts)
        per = np.where(gnz > 0, gsum / np.maximum(gnz, 1.0), 0.0)
        q = np.repeat(per, lens) * nz
        d = _kl(p, q)
        if d < best:
            best, best_i = d, i
    return float(best_i * width)


@dataclass
class _State:
    lo: float = math.inf
    hi: float = -math.inf
    hist: RunningHistogram | None = None


class RangeCollector:
    """Per-tensor running state; ``ranges()`` gives ``{name: (lo, hi)}``."""

    def __init__(self, tensors: Iterable[str], method: str, *, symmetric: bool, percentile: float = 99.999,
                 bins: int = DEFAULT_BINS, sample_size: int = DEFAULT_SAMPLE):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        self.method, self.symmetric, self.percentile = method, symmetric, percentile
        self.sample_size = sample_size
        self._batches = 0
        self.state = {t: _State(hist=RunningHistogram(bins) if method != "max" else None) for t in tensors}

    def state_bytes(self) -> int:
        return sum(s.hist.counts.nbytes for s in self.state.values() if s.hist is not None)

    def update(self, name: str, arr: np.ndarray) -> None:
        s = self.state[name]
        if arr.size == 0:
            return
        flat = arr.reshape(-1)
        lo, hi = float(flat.min()), float(flat.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise BuildError(f"calibration: tensor {name} holds non-finite values (NaN or inf)",
                             hint="check the model and the calibration images; an fp32 model must not overflow")
        s.lo, s.hi = min(s.lo, lo), max(s.hi, hi)
        if s.hist is not None:
            if flat.size > self.sample_size:
                step = -(-flat.size // self.sample_size)
                flat = flat[(self._batches * 7919) % step :: step]
            s.hist.update(flat, max(abs(lo), abs(hi)))

    def end_batch(self) -> None:
        self._batches += 1

    def _threshold(self, s: _State) -> float:
        amax = max(abs(s.lo), abs(s.hi))
        if s.hist is None:
            return amax
        mag, width = s.hist.magnitude()
        if self.method == "percentile":
            t = percentile_threshold(mag, width, self.percentile)
        else:
            t = entropy_threshold(mag, width)
        return min(t, amax) if t > 0 else amax

    def ranges(self) -> dict[str, tuple[float, float]]:
        out = {}
        for name, s in self.state.items():
            if s.lo > s.hi:
                raise BuildError(f"calibration: tensor {name} was never produced")
            t = self._threshold(s)
            out[name] = (-t, t) if self.symmetric else (max(s.lo, -t), min(s.hi, t))
        return out


# ---------------------------------------------------------------- running the model


def tensors_to_calibrate(model: onnx.ModelProto, op_types, skip_nodes=frozenset(), outputs: bool = True) -> list[str]:
    """Float activations read (and, with ``outputs``, written) by nodes of ``op_types`` not in
    ``skip_nodes``: what the quantizer needs a range for (initializers excluded)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    inits = {i.name for i in model.graph.initializer}
    out: dict[str, None] = {}
    for n in model.graph.node:
        if n.op_type not in op_types or n.name in skip_nodes:
            continue
        for t in list(n.input) + (list(n.output) if outputs else []):
            if t and t not in inits and types.get(t) == onnx.TensorProto.FLOAT:
                out[t] = None
    return list(out)


def augmented_model(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are ``tensors`` (the original outputs dropped)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    for t in tensors:
        m.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    return m


def _session(model: onnx.ModelProto, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise BuildError(f"calibration: onnxruntime cannot run the model: {type(e).__name__}: {e}") from e


def available_memory() -> int:
    """Bytes the system can still give (MemAvailable), or total RAM where /proc/meminfo is absent."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def current_rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class MemoryEstimate:
    batch_bytes: int  # calibrated tensors of one batch
    state_bytes: int  # histograms
    base_bytes: int  # this process before the run
    budget_bytes: int

    @property
    def peak_bytes(self) -> int:
        # outputs plus ~25% for onnxruntime's own intermediates and the per-tensor temporaries
        return self.base_bytes + int(self.batch_bytes * 1.25) + self.state_bytes

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.budget_bytes

    def describe(self) -> str:
        gb = 1 << 30
        return (f"about {self.peak_bytes / gb:.1f} GB (one batch of activations {self.batch_bytes / gb:.2f} GB, "
                f"histograms {self.state_bytes / gb:.2f} GB, process {self.base_bytes / gb:.2f} GB), "
                f"budget {self.budget_bytes / gb:.1f} GB")


def probe_batch_bytes(session, make_feed, side: int, probe_sides: tuple[int, int]) -> int:
    """Output bytes of one image at ``side`` x ``side``, fitted as a + b * pixels on two small runs."""
    sizes = []
    for s in probe_sides:
        outs = session.run(None, make_feed(s))
        sizes.append(sum(o.nbytes for o in outs))
        del outs
    (p1, p2), (b1, b2) = [s * s for s in probe_sides], sizes
    slope = max(0.0, (b2 - b1) / (p2 - p1))
    return int(max(b1, b2, b1 + slope * (side * side - p1)))


def collect_ranges(
    model: onnx.ModelProto,
    tensors: list[str],
    batches: Iterable[dict[str, np.ndarray]],
    method: str,
    *,
    symmetric: bool,
    percentile: float = 99.999,
    estimate: MemoryEstimate | None = None,
    session=None,
) -> dict[str, tuple[float, float]]:
    """Run ``model`` on every feed of ``batches`` and return the range of each tensor of ``tensors``."""
    if estimate is not None and not estimate.fits:
        raise InputError(f"INT8 calibration would need {estimate.describe()}",
                         hint="lower --batch-size or --calib-size, or raise --max-memory")
    sess = session or _session(augmented_model(model, tensors))
    batches = iter(batches)
    names = [o.name for o in sess.get_outputs()]
    collector = RangeCollector(tensors, method, symmetric=symmetric, percentile=percentile)
    seen = 0
    while True:
        try:
            feed = next(batches)
        except StopIteration:
            break
        except RfdeployError:
            raise
        except Exception as e:  # a user's boxes_fn, a decoder: the run fails as a build error
            raise BuildError(f"calibration input failed: {type(e).__name__}: {e}") from e
        try:
            outs = sess.run(None, feed)
        except Exception as e:  # onnxruntime raises its own exception types
            raise BuildError(f"calibration run failed: {type(e).__name__}: {e}") from e
        for name, arr in zip(names, outs):
            collector.update(name, arr)
        collector.end_batch()
        del outs
        seen += 1
    if not seen:
        raise InputError("no calibration batch was produced")
    return collector.ranges()
