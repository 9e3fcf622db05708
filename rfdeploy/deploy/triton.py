"""Write a Triton Inference Server model repository for rfdeploy's engines.

Layout (``rfdeploy triton-repo``)::

    REPO/
      rfdeploy_detector/config.pbtxt      tensorrt_plan, dynamic batching, GPU instance group
      rfdeploy_detector/1/model.plan      the engine plan, unchanged
      rfdeploy_detector/1/model.plan.json its rfdeploy manifest (Triton ignores it)
      rfdeploy_ranker/...                 the same for the ranker (optional)
      rfdeploy_faces/config.pbtxt         Python backend: encoded image -> BOXES, SCORES
      rfdeploy_faces/1/model.py           decode, tiles, detector (BLS), ranker (BLS), NMS
      rfdeploy_faces/1/faces.json         tiling/threshold settings and the tensor names

Tensor names, dims and dtypes come from the engine manifests (``X.engine.json``), so the configs
describe exactly what the plans were built with. A Python model rather than an ensemble: the
tile loop, the global merge and the ranker's dependence on the merged candidates are control flow
an ensemble cannot express. Writing is atomic: the repository is assembled in a temporary folder
beside ``out_dir`` and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

from rfdeploy.contract import PreprocessContract
from rfdeploy.engines.manifest import IOTensor, Manifest, load_manifest
from rfdeploy.errors import InputError, ModelFileError
from rfdeploy.runtime.facelogic import FaceLogicConfig

TRITON_DTYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL",
}
FACES_INPUT = "IMAGE"
FACES_OUTPUTS = (("BOXES", "TYPE_FP32", (-1, 4)), ("SCORES", "TYPE_FP32", (-1,)),
                 ("DETECTOR_SCORES", "TYPE_FP32", (-1,)), ("IMAGE_SIZE", "TYPE_INT32", (2,)))


@dataclass(frozen=True)
class TritonRepo:
    """What was written: the repository folder and one entry per model (name -> config path)."""

    path: Path
    models: dict[str, Path] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


# --- config.pbtxt text ----------------------------------------------------------------------


def pbtxt_string(s: str) -> str:
    """A protobuf text-format string literal (UTF-8 bytes outside printable ASCII as octal escapes)."""
    out = []
    for b in s.encode("utf-8"):
        c = chr(b)
        if c in ('"', "\\"):
            out.append("\\" + c)
        elif 32 <= b < 127:
            out.append(c)
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _tensor_block(name: str, dtype: str, dims: Sequence[int]) -> str:
    return f"  {{\n    name: {pbtxt_string(name)}\n    data_type: {dtype}\n    dims: [ {', '.join(str(int(d)) for d in dims)} ]\n  }}"


def _io_section(kind: str, tensors: Sequence[tuple[str, str, Sequence[int]]]) -> str:
    return f"{kind} [\n" + ",\n".join(_tensor_block(*t) for t in tensors) + "\n]\n"


def _instance_group(kind: str, count: int, gpus: Sequence[int] | None) -> str:
    g = f"    count: {int(count)}\n    kind: {kind}\n"
    if gpus:
        g += f"    gpus: [ {', '.join(str(int(x)) for x in gpus)} ]\n"
    return "instance_group [\n  {\n" + g + "  }\n]\n"


# --- engines -> model configs ----------------------------------------------------------------


def _triton_dtype(t: IOTensor, engine: Path) -> str:
    if t.dtype not in TRITON_DTYPES:
        raise ModelFileError(f"{engine}: tensor {t.name!r} has dtype {t.dtype}, which Triton has no type for")
    return TRITON_DTYPES[t.dtype]


def _batch_limits(m: Manifest, engine: Path, requested: int) -> int:
    """Triton's max_batch_size: 0 when the plan's batch dim is fixed, else min(requested, profile 0's
    max batch). Triton's TensorRT backend runs instances on profile 0 unless told otherwise."""
    if any(t.shape[0] != -1 for t in m.inputs):
        return 0
    prof = m.profiles[0]
    return max(1, min(int(requested), min(r.max[0] for r in prof.shapes.values())))


def _dims(t: IOTensor, batched: bool) -> tuple[int, ...]:
    return tuple(t.shape[1:]) if batched else tuple(t.shape)


def trt_model_config(name: str, m: Manifest, engine: Path, *, max_batch: int, instances: int,
                     gpus: Sequence[int] | None = None, max_queue_delay_us: int = 1000) -> tuple[str, int]:
    """(config.pbtxt text, max_batch_size) of a tensorrt_plan model for an engine manifest."""
    mbs = _batch_limits(m, engine, max_batch)
    batched = mbs > 0
    text = f"name: {pbtxt_string(name)}\nplatform: \"tensorrt_plan\"\nmax_batch_size: {mbs}\n"
    text += _io_section("input", [(t.name, _triton_dtype(t, engine), _dims(t, batched)) for t in m.inputs])
    text += _io_section("output", [(t.name, _triton_dtype(t, engine), _dims(t, batched)) for t in m.outputs])
    if batched:
        text += f"dynamic_batching {{\n  max_queue_delay_microseconds: {int(max_queue_delay_us)}\n}}\n"
    text += _instance_group("KIND_GPU", instances, gpus)
    return text, mbs


def faces_model_config(name: str, *, instances: int) -> str:
    """config.pbtxt of the Python-backend model: the encoded image file as UINT8 bytes."""
    text = f"name: {pbtxt_string(name)}\nbackend: \"python\"\nmax_batch_size: 0\n"
    text += _io_section("input", [(FACES_INPUT, "TYPE_UINT8", (-1,))])
    text += _io_section("output", list(FACES_OUTPUTS))
    text += _instance_group("KIND_CPU", instances, None)
    return text


def _contract(m: Manifest, engine: Path) -> PreprocessContract:
    raw = m.metadata.get("rfdeploy.contract")
    if not raw:
        raise ModelFileError(
            f"{engine}: the manifest carries no preprocessing contract (metadata 'rfdeploy.contract')",
            hint="build the engine from an ONNX file exported by `rfdeploy export`",
        )
    try:
        return PreprocessContract.from_dict(json.loads(raw))
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{engine}: bad preprocessing contract in the manifest ({e})") from e


def _model_config(m: Manifest) -> dict:
    try:
        return json.loads(m.metadata.get("rfdeploy.config", "{}"))
    except json.JSONDecodeError:
        return {}


def _find(tensors: Sequence[IOTensor], name: str, rank: int, engine: Path, what: str) -> IOTensor:
    for t in tensors:
        if t.name == name and len(t.shape) == rank:
            return t
    have = ", ".join(f"{t.name}{list(t.shape)}" for t in tensors)
    raise ModelFileError(f"{engine}: no {what} tensor {name!r} of rank {rank} (has {have})",
                         hint="the Triton repository serves rfdeploy's own detector/ranker interfaces")


def _detector_io(m: Manifest, engine: Path) -> dict:
    images = [t for t in m.inputs if len(t.shape) == 4]
    if len(m.inputs) != 1 or not images:
        raise ModelFileError(f"{engine}: a detector engine needs one 4-D image input, has {[t.name for t in m.inputs]}")
    boxes = _find(m.outputs, "boxes", 3, engine, "output")
    scores = _find(m.outputs, "scores", 2, engine, "output")
    return {"input": images[0].name, "input_dtype": images[0].dtype, "boxes": boxes.name, "scores": scores.name}


def _ranker_io(m: Manifest, engine: Path) -> tuple[dict, int]:
    image = _find(m.inputs, "image", 4, engine, "input")
    boxes = _find(m.inputs, "boxes", 3, engine, "input")
    scores = _find(m.outputs, "scores", 2, engine, "output")
    n = boxes.shape[1]
    if n <= 0:
        prof = m.profiles[0].shapes[boxes.name]
        if prof.min[1] != prof.max[1]:
            raise ModelFileError(f"{engine}: the ranker's number of boxes is dynamic ({prof}); rebuild with a fixed N")
        n = prof.max[1]
    return {"image": image.name, "image_dtype": image.dtype, "boxes": boxes.name, "boxes_dtype": boxes.dtype,
            "scores": scores.name}, int(n)


def _max_input(m: Manifest, image: str) -> int | None:
    r = m.profiles[0].shapes.get(image)
    return None if r is None else int(min(r.max[2], r.max[3]))


def _min_input(m: Manifest, image: str) -> tuple[int, int] | None:
    r = m.profiles[0].shapes.get(image)
    return None if r is None else (int(r.min[3]), int(r.min[2]))


def write_triton_repo(
    out_dir: str | os.PathLike,
    detector_engine: str | os.PathLike,
    ranker_engine: str | os.PathLike | None = None,
    *,
    max_batch: int = 8,
    instances: int = 1,
    python_instances: int = 1,
    gpus: Sequence[int] | None = None,
    tile: str = "auto",
    score_thr: float | None = None,
    candidate_thr: float | None = None,
    nms_iou: float = 0.4,
    max_det: int = 750,
    max_queue_delay_us: int = 1000,
    detector_name: str = "rfdeploy_detector",
    ranker_name: str = "rfdeploy_ranker",
    faces_name: str = "rfdeploy_faces",
    overwrite: bool = False,
) -> TritonRepo:
    """Write a Triton model repository to ``out_dir`` (see the module docstring for the layout).

    ``max_batch``: Triton max_batch_size of the TensorRT models (capped by each plan's profile 0);
    ``instances``: GPU instances per TensorRT model (``gpus``: which GPUs, default all);
    ``python_instances``: CPU instances of the Python model. ``tile``, ``score_thr`` (default: the
    detector config's output threshold, else 0.5), ``candidate_thr``, ``nms_iou``, ``max_det``:
    as in ``rfdeploy infer``. ``overwrite``: replace an existing ``out_dir``.

    Raises InputError (bad arguments, ``out_dir`` exists) and ModelFileError (engine or manifest
    missing, or an engine without rfdeploy's interface and preprocessing contract).
    """
    if max_batch < 1 or instances < 1 or python_instances < 1:
        raise InputError("max_batch, instances and python_instances must be >= 1")
    names = [detector_name, faces_name] + ([ranker_name] if ranker_engine is not None else [])
    if len(set(names)) != len(names) or not all(n and "/" not in n and not n.startswith(".") for n in names):
        raise InputError(f"model names must be distinct folder names, got {names}")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists", hint="choose a new folder or pass overwrite (--force)")
    if not out.parent.is_dir():
        raise InputError(f"parent folder does not exist: {out.parent}")

    det_path = Path(detector_engine)
    if not det_path.is_file():
        raise ModelFileError(f"detector engine not found: {det_path}")
    det_m = load_manifest(det_path)
    det_io = _detector_io(det_m, det_path)
    det_cfg = _model_config(det_m)
    rank = None
    if ranker_engine is not None:
        rank_path = Path(ranker_engine)
        if not rank_path.is_file():
            raise ModelFileError(f"ranker engine not found: {rank_path}")
        rank_m = load_manifest(rank_path)
        rank_io, n_boxes = _ranker_io(rank_m, rank_path)
        rank = (rank_path, rank_m, rank_io, n_boxes)

    det_text, det_mbs = trt_model_config(detector_name, det_m, det_path, max_batch=max_batch, instances=instances,
                                         gpus=gpus, max_queue_delay_us=max_queue_delay_us)
    try:
        logic = FaceLogicConfig(
            detector_contract=_contract(det_m, det_path),
            ranker_contract=_contract(rank[1], rank[0]) if rank else None,
            ranker_boxes=rank[3] if rank else 0,
            max_batch=max(1, det_mbs),
            max_input=_max_input(det_m, det_io["input"]),
            min_input=_min_input(det_m, det_io["input"]),
            tile=tile,
            candidate_thr=candidate_thr if candidate_thr is not None else float(det_cfg.get("score_threshold", 0.05)),
            max_candidates=int(det_cfg.get("candidates", 5000)),
            nms_iou=nms_iou,
            max_det=max_det,
            score_thr=score_thr if score_thr is not None else float(det_cfg.get("output_score_threshold", 0.5)),
        )
    except ValueError as e:
        raise InputError(str(e)) from e
    settings = {"facelogic": logic.to_dict(), "detector": {"model": detector_name, **det_io}, "ranker": None}

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        written = {detector_name: _write_trt_model(tmp / detector_name, det_path, det_text)}
        if rank:
            rank_text, _ = trt_model_config(ranker_name, rank[1], rank[0], max_batch=max_batch, instances=instances,
                                            gpus=gpus, max_queue_delay_us=max_queue_delay_us)
            written[ranker_name] = _write_trt_model(tmp / ranker_name, rank[0], rank_text)
            settings["ranker"] = {"model": ranker_name, **rank[2]}
        fdir = tmp / faces_name
        (fdir / "1").mkdir(parents=True)
        (fdir / "config.pbtxt").write_text(faces_model_config(faces_name, instances=python_instances))
        source = resources.files("rfdeploy.deploy").joinpath("triton_model.py").read_text(encoding="utf-8")
        (fdir / "1" / "model.py").write_text(source)
        (fdir / "1" / "faces.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        written[faces_name] = fdir / "config.pbtxt"
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a server user must read it
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TritonRepo(out, {k: out / v.relative_to(tmp) for k, v in written.items()}, settings)


def _write_trt_model(model_dir: Path, engine: Path, config_text: str) -> Path:
    (model_dir / "1").mkdir(parents=True)
    shutil.copyfile(engine, model_dir / "1" / "model.plan")
    shutil.copyfile(engine.with_name(engine.name + ".json"), model_dir / "1" / "model.plan.json")
    (model_dir / "config.pbtxt").write_text(config_text)
    return model_dir / "config.pbtxt"


def _swap_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def triton_repo_cli(
    out_dir: str,
    detector_engine: str,
    ranker_engine: str | None = None,
    *,
    max_batch: int = 8,
    instances: int = 1,
    python_instances: int = 1,
    tile: str = "auto",
    score_thr: float | None = None,
    force: bool = False,
) -> TritonRepo:
    """What ``rfdeploy triton-repo OUT DETECTOR.engine [--ranker RANKER.engine] [--max-batch B]
    [--instances N] [--python-instances N] [--tile auto|off|SIZE] [--score-thr T] [--force]`` does."""
    return write_triton_repo(out_dir, detector_engine, ranker_engine, max_batch=max_batch, instances=instances,
                             python_instances=python_instances, tile=tile, score_thr=score_thr, overwrite=force)
