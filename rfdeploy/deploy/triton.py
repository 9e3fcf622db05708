"""Write a Triton Inference Server model repository for rfdeploy's detector and ranker.

Two kinds of repository come from one description of the networks (:class:`ServedNetwork`: tensor
names, dims, dtypes, batching, model metadata), so they cannot drift apart:

* GPU (default): the networks as ``tensorrt_plan`` models on TensorRT engines.
* CPU (``cpu=True``): the same networks as Python-backend models that run rfdeploy's onnxruntime
  runner on the ONNX files, for servers without a GPU or TensorRT (the ``tritonserver`` in PyPI's
  ``nvidia-pytriton`` has the Python backend only; see :mod:`rfdeploy.deploy.triton_server`).

Layout (``rfdeploy triton-repo``)::

    REPO/
      rfdeploy_detector/config.pbtxt      tensor names/dims/dtypes, dynamic batching, instances
      rfdeploy_detector/1/model.plan      GPU: the engine plan, unchanged (+ model.plan.json, its
                                          rfdeploy manifest, which Triton ignores)
      rfdeploy_detector/1/model.onnx      CPU: the ONNX file, with model.py (onnxruntime) and
                                          network.json (its tensor names)
      rfdeploy_ranker/...                 the same for the ranker (optional)
      rfdeploy_faces/config.pbtxt         Python backend: encoded image -> BOXES, SCORES, ...
      rfdeploy_faces/1/model.py           decode, tiles, detector (BLS), ranker (BLS), NMS
      rfdeploy_faces/1/faces.json         the face logic's settings and the tensor names

CPU repositories also carry ``rfdeploy_env.py`` and ``python_env.json`` beside each model.py: the
Python paths the server's Python stub needs to import rfdeploy (see ``triton_env.py``).

The faces model's settings come from :func:`rfdeploy.runtime.logic_config.face_logic_config`, the
factory ``rfdeploy infer`` uses, fed the same model metadata and engine limits; on engines the
TensorRT models run on the profile the runtime would feed. A Python model rather than an
ensemble: the tile loop, the global merge and the ranker's dependence on the merged candidates are
control flow an ensemble cannot express. Writing is atomic: the repository is assembled in a
temporary folder beside ``out_dir`` and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

import rfdeploy
from rfdeploy.core import onnxinfo
from rfdeploy.core.contract import PreprocessContract
from rfdeploy.core.errors import InputError, ModelFileError
from rfdeploy.core.fsutil import atomic_dir
from rfdeploy.core.metadata import manifest_path, onnx_metadata, read_config, read_contract
from rfdeploy.engines.manifest import IOTensor, load_manifest
from rfdeploy.export.cache import cached_export
from rfdeploy.models import DEFAULT_DETECTOR_ONNX, DEFAULT_RANKER_ONNX
from rfdeploy.models.config import config_from_dict
from rfdeploy.runtime.logic_config import engine_limits, face_logic_config, ranker_runs

TRITON_DTYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL",
}
FACES_INPUT = "IMAGE"
FACES_OUTPUTS = (("BOXES", "TYPE_FP32", (-1, 4)), ("SCORES", "TYPE_FP32", (-1,)),
                 ("DETECTOR_SCORES", "TYPE_FP32", (-1,)), ("IMAGE_SIZE", "TYPE_INT32", (2,)))
ENV_FILE = "python_env.json"


@dataclass(frozen=True)
class TritonRepo:
    """What was written: the repository folder and one entry per model (name -> config path)."""

    path: Path
    models: dict[str, Path] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ServedNetwork:
    """One network as Triton serves it, whichever backend runs it.

    ``inputs``/``outputs`` carry full shapes (batch dim included, -1 = dynamic).
    ``max_batch_size``: Triton's (0: the batch dim is fixed and travels in the dims).
    ``profile``/``limits``: engines only: the optimisation profile the runtime feeds and what it
    admits (:class:`rfdeploy.engines.profiles.InputLimits`); the TensorRT model runs on it.
    """

    role: str  # detector | ranker
    source: Path
    inputs: tuple[IOTensor, ...]
    outputs: tuple[IOTensor, ...]
    metadata: Mapping[str, str]
    max_batch_size: int
    profile: int | None = None
    limits: object | None = None

    @property
    def contract(self) -> PreprocessContract:
        return read_contract(self.metadata, self.source)

    @property
    def config(self):
        """The model config (DetectorConfig / RankerConfig), or None when absent or unreadable."""
        try:
            return config_from_dict(read_config(self.metadata, self.source))
        except (ModelFileError, ValueError, TypeError, KeyError):
            return None

    def dims(self, t: IOTensor) -> tuple[int, ...]:
        return tuple(t.shape[1:]) if self.max_batch_size > 0 else tuple(t.shape)


def network_from_engine(path: str | os.PathLike, role: str, max_batch: int) -> ServedNetwork:
    """The description of an engine (from its manifest)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{role} engine not found: {path}")
    m = load_manifest(path)
    probe = ServedNetwork(role, path, m.inputs, m.outputs, dict(m.metadata), 0)
    limits = engine_limits(m, probe.contract)
    prof = m.profiles[limits.index]
    if any(t.shape[0] != -1 for t in m.inputs):
        mbs = 0
    else:  # every input's batch range in the profile the runtime feeds
        mbs = max(1, min(int(max_batch), *(int(r.max[0]) for r in prof.shapes.values())))
    return ServedNetwork(role, path, m.inputs, m.outputs, dict(m.metadata), mbs, limits.index, limits)


def network_from_onnx(path: str | os.PathLike, role: str, max_batch: int) -> ServedNetwork:
    """The description of an ONNX file (from its graph signature and metadata_props)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{role} model not found: {path}")
    model = onnxinfo.load_onnx(path, weights=False)
    sig = onnxinfo.read_signature(model)

    def tensors(infos):
        return tuple(IOTensor(t.name, tuple(d if d is not None else -1 for d in t.static_shape), t.dtype) for t in infos)

    inputs, outputs = tensors(sig.inputs), tensors(sig.outputs)
    dynamic_batch = all(t.shape and t.shape[0] == -1 for t in inputs + outputs)
    return ServedNetwork(role, path, inputs, outputs, onnx_metadata(model), int(max_batch) if dynamic_batch else 0)


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


def _instance_group(kind: str, count: int, gpus: Sequence[int] | None, profile: int | None = None) -> str:
    g = f"    count: {int(count)}\n    kind: {kind}\n"
    if gpus:
        g += f"    gpus: [ {', '.join(str(int(x)) for x in gpus)} ]\n"
    if profile is not None:
        g += f"    profile: [ {pbtxt_string(str(int(profile)))} ]\n"
    return "instance_group [\n  {\n" + g + "  }\n]\n"


def _triton_dtype(t: IOTensor, source: Path) -> str:
    if t.dtype not in TRITON_DTYPES:
        raise ModelFileError(f"{source}: tensor {t.name!r} has dtype {t.dtype}, which Triton has no type for")
    return TRITON_DTYPES[t.dtype]


def network_config(name: str, net: ServedNetwork, *, cpu: bool, instances: int, gpus: Sequence[int] | None = None,
                   max_queue_delay_us: int = 1000) -> str:
    """config.pbtxt of one network: a tensorrt_plan model on GPUs, or a Python-backend model on
    CPUs; everything else (tensors, batching) is the same text."""
    text = f"name: {pbtxt_string(name)}\n"
    text += 'backend: "python"\n' if cpu else 'platform: "tensorrt_plan"\n'
    text += f"max_batch_size: {net.max_batch_size}\n"
    text += _io_section("input", [(t.name, _triton_dtype(t, net.source), net.dims(t)) for t in net.inputs])
    text += _io_section("output", [(t.name, _triton_dtype(t, net.source), net.dims(t)) for t in net.outputs])
    if net.max_batch_size > 0:
        text += f"dynamic_batching {{\n  max_queue_delay_microseconds: {int(max_queue_delay_us)}\n}}\n"
    if cpu:
        text += _instance_group("KIND_CPU", instances, None)
    else:
        text += _instance_group("KIND_GPU", instances, gpus, net.profile)
    return text


def faces_model_config(name: str, *, instances: int) -> str:
    """config.pbtxt of the Python-backend model: the encoded image file as UINT8 bytes."""
    text = f"name: {pbtxt_string(name)}\nbackend: \"python\"\nmax_batch_size: 0\n"
    text += _io_section("input", [(FACES_INPUT, "TYPE_UINT8", (-1,))])
    text += _io_section("output", list(FACES_OUTPUTS))
    text += _instance_group("KIND_CPU", instances, None)
    return text


# --- the networks' interfaces ----------------------------------------------------------------


def _find(tensors: Sequence[IOTensor], name: str, rank: int, source: Path, what: str) -> IOTensor:
    for t in tensors:
        if t.name == name and len(t.shape) == rank:
            return t
    have = ", ".join(f"{t.name}{list(t.shape)}" for t in tensors)
    raise ModelFileError(f"{source}: no {what} tensor {name!r} of rank {rank} (has {have})",
                         hint="the Triton repository serves rfdeploy's own detector/ranker interfaces")


def _detector_io(net: ServedNetwork) -> dict:
    images = [t for t in net.inputs if len(t.shape) == 4]
    if len(net.inputs) != 1 or not images:
        raise ModelFileError(f"{net.source}: a detector needs one 4-D image input, has {[t.name for t in net.inputs]}")
    boxes = _find(net.outputs, "boxes", 3, net.source, "output")
    scores = _find(net.outputs, "scores", 2, net.source, "output")
    return {"input": images[0].name, "input_dtype": images[0].dtype, "boxes": boxes.name, "scores": scores.name}


def _ranker_io(net: ServedNetwork) -> tuple[dict, int]:
    image = _find(net.inputs, "image", 4, net.source, "input")
    boxes = _find(net.inputs, "boxes", 3, net.source, "input")
    scores = _find(net.outputs, "scores", 2, net.source, "output")
    n = boxes.shape[1]
    if n <= 0 and net.profile is not None:  # an engine: a dynamic N fixed by its profile
        prof = load_manifest(net.source).profiles[net.profile].shapes[boxes.name]
        if prof.min[1] == prof.max[1]:
            n = prof.max[1]
    if n <= 0:
        raise ModelFileError(f"{net.source}: the ranker's number of boxes is dynamic; export or build it with a fixed N")
    return {"image": image.name, "image_dtype": image.dtype, "boxes": boxes.name, "boxes_dtype": boxes.dtype,
            "scores": scores.name}, int(n)


# --- the server's Python environment (CPU repositories) --------------------------------------


def _numpy_version(site: Path) -> str | None:
    """The numpy version installed in a site-packages folder (from its dist-info), or None."""
    for d in sorted(site.glob("numpy-*.dist-info")):
        meta = d / "METADATA"
        if meta.is_file():
            for line in meta.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    return None


def server_site_packages(server_env: str | os.PathLike) -> Path:
    """The site-packages folder of the Python environment where nvidia-pytriton is installed."""
    env = Path(server_env).resolve()
    found = sorted(env.glob("lib/python3.*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    if not found:
        raise InputError(f"{env}: no nvidia-pytriton installation found in this environment",
                         hint="python3 -m venv .venv-triton && .venv-triton/bin/pip install nvidia-pytriton==0.7.0")
    return found[0].parents[3]


def python_env(server_env: str | os.PathLike | None) -> dict:
    """What a CPU repository's models add to the server stub's Python: this environment's
    site-packages (where rfdeploy and onnxruntime are installed) and, from the server's
    environment, numpy < 2, which the stub's array bridge needs."""
    paths: list[str] = []
    for key in ("purelib", "platlib"):
        p = sysconfig.get_paths()[key]
        if p not in paths:
            paths.append(p)
    root = Path(rfdeploy.__file__).resolve().parents[1]
    if not any(root == Path(p).resolve() or Path(p).resolve() in root.parents for p in paths):
        paths.append(str(root))  # rfdeploy imported from a source tree (editable install, PYTHONPATH)
    env = {"python": list(sys.version_info[:2]), "site_packages": paths, "numpy_site": None}
    if server_env is not None:
        site = server_site_packages(server_env)
        version = _numpy_version(site)
        if version is None or int(version.split(".")[0]) >= 2:
            raise InputError(f"{site} has numpy {version or 'missing'}; Triton's Python stub needs numpy < 2 there",
                             hint="reinstall the server environment: pip install nvidia-pytriton==0.7.0")
        env["numpy_site"] = str(site)
    else:
        import numpy

        if int(numpy.__version__.split(".")[0]) >= 2:
            raise InputError(
                f"this environment has numpy {numpy.__version__}, and Triton's Python stub reads arrays as numpy 1 does",
                hint="pass the server's environment (where nvidia-pytriton and its numpy < 2 are installed): "
                     "--server-env .venv-triton")
    return env


# --- the repository --------------------------------------------------------------------------


def _model_path(p, default: Path) -> Path:
    return Path(p) if p is not None else default


def _onnx_file(path: Path, role: str) -> Path:
    """An ONNX file for a CPU repository: an ONNX file as it is, a checkpoint exported once."""
    if not path.is_file():
        raise InputError(f"{role} model not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return path
    if suffix in (".safetensors", ".pt", ".pth"):
        return cached_export(path)
    raise InputError(f"{path}: a CPU repository serves ONNX files or checkpoints, not {suffix or 'this file'}",
                     hint="engines are for GPU repositories (without --cpu)")


def write_triton_repo(
    out_dir: str | os.PathLike,
    detector: str | os.PathLike | None = None,
    ranker: str | os.PathLike | None = None,
    *,
    cpu: bool = False,
    use_ranker: bool | None = None,
    server_env: str | os.PathLike | None = None,
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

    GPU (default): ``detector`` and ``ranker`` are engines (``.engine`` + manifest). CPU
    (``cpu``): ONNX files or checkpoints (exported once), default the bundled detector. As
    ``rfdeploy triton-repo`` (and ``infer``), the detector is served alone unless a ``ranker`` is
    given or ``use_ranker`` is True (on CPU without ``ranker``: the bundled one); ``use_ranker``
    False leaves out a given ranker. ``server_env``: the Python environment holding
    nvidia-pytriton (its numpy < 2 is used by the stub; CPU only).

    ``max_batch``: Triton max_batch_size of the networks (capped by each engine's profile);
    ``instances``: instances per network model (GPU: per GPU in ``gpus``, default all);
    ``python_instances``: instances of the faces model. ``tile``, ``score_thr`` (default: the
    detector config's output threshold), ``candidate_thr``, ``nms_iou``, ``max_det``: as in
    ``rfdeploy infer``. ``overwrite``: replace an existing ``out_dir``.

    Raises InputError (bad arguments, ``out_dir`` exists) and ModelFileError (a model file missing,
    or without rfdeploy's interface and preprocessing contract).
    """
    if max_batch < 1 or instances < 1 or python_instances < 1:
        raise InputError("max_batch, instances and python_instances must be >= 1")
    if server_env is not None and not cpu:
        raise InputError("--server-env is for CPU repositories (--cpu)")
    use_ranker = ranker_runs(ranker, use_ranker)
    if use_ranker and ranker is None and not cpu:
        raise InputError("the bundled ranker is served by CPU repositories only: a GPU repository needs the "
                         "ranker engine", hint="pass the ranker engine (--ranker), or cpu (--cpu)")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists", hint="choose a new folder or pass overwrite (--force)")
    if not out.parent.is_dir():
        raise InputError(f"parent folder does not exist: {out.parent}")

    if cpu:
        env = python_env(server_env)  # before any export: a wrong environment is a quick error
        # the bundled models as the ONNX files shipped beside their checkpoints: nothing to export
        det = network_from_onnx(_onnx_file(_model_path(detector, DEFAULT_DETECTOR_ONNX), "detector"), "detector",
                                max_batch)
        rank = (network_from_onnx(_onnx_file(_model_path(ranker, DEFAULT_RANKER_ONNX), "ranker"), "ranker", max_batch)
                if use_ranker else None)
    else:
        if detector is None:
            raise InputError("a GPU repository needs the detector engine", hint="or pass --cpu to serve ONNX files on CPUs")
        det = network_from_engine(detector, "detector", max_batch)
        rank = network_from_engine(ranker, "ranker", max_batch) if use_ranker else None
        env = None
    names = [detector_name, faces_name] + ([ranker_name] if rank is not None else [])
    if len(set(names)) != len(names) or not all(n and "/" not in n and not n.startswith(".") for n in names):
        raise InputError(f"model names must be distinct folder names, got {names}")

    det_io = _detector_io(det)
    rank_io, n_boxes = _ranker_io(rank) if rank is not None else (None, 0)
    logic = face_logic_config(
        detector_contract=det.contract,
        detector_config=det.config,
        ranker_contract=rank.contract if rank is not None else None,
        ranker_boxes=n_boxes,
        ranker_config=rank.config if rank is not None else None,
        detector_limits=det.limits,
        ranker_limits=rank.limits if rank is not None else None,
        network_max_batch=det.max_batch_size or 1,
        tile=tile,
        tile_batch=max_batch,
        score_thr=score_thr,
        candidate_thr=candidate_thr,
        nms_iou=nms_iou,
        max_det=max_det,
    )
    settings = {"facelogic": logic.to_dict(), "detector": {"model": detector_name, **det_io},
                "ranker": {"model": ranker_name, **rank_io} if rank is not None else None}

    with atomic_dir(out, replace=overwrite) as tmp:
        written = {}
        for name, net in ((detector_name, det), (ranker_name, rank)):
            if net is None:
                continue
            text = network_config(name, net, cpu=cpu, instances=instances, gpus=gpus,
                                  max_queue_delay_us=max_queue_delay_us)
            written[name] = _write_network(tmp / name, net, text, env)
        fdir = tmp / faces_name
        (fdir / "1").mkdir(parents=True)
        (fdir / "config.pbtxt").write_text(faces_model_config(faces_name, instances=python_instances))
        _copy_source("triton_model.py", fdir / "1" / "model.py")
        (fdir / "1" / "faces.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        _write_env(fdir / "1", env)
        written[faces_name] = fdir / "config.pbtxt"
    return TritonRepo(out, {k: out / v.relative_to(tmp) for k, v in written.items()}, settings)


def _copy_source(name: str, dst: Path) -> None:
    dst.write_text(resources.files("rfdeploy.deploy").joinpath(name).read_text(encoding="utf-8"))


def _write_env(version_dir: Path, env: dict | None) -> None:
    """The stub's Python paths (CPU repositories); GPU repositories use the server's own Python."""
    _copy_source("triton_env.py", version_dir / "rfdeploy_env.py")
    if env is not None:
        (version_dir / ENV_FILE).write_text(json.dumps(env, indent=2) + "\n")


def _write_network(model_dir: Path, net: ServedNetwork, config_text: str, env: dict | None) -> Path:
    version = model_dir / "1"
    version.mkdir(parents=True)
    if env is None:  # GPU: the plan and its manifest
        shutil.copyfile(net.source, version / "model.plan")
        shutil.copyfile(manifest_path(net.source), manifest_path(version / "model.plan"))
    else:  # CPU: the ONNX file and the Python model that runs it
        shutil.copyfile(net.source, version / "model.onnx")
        _copy_source("triton_onnx_model.py", version / "model.py")
        spec = {"role": net.role, "inputs": [t.name for t in net.inputs], "outputs": [t.name for t in net.outputs],
                "max_batch_size": net.max_batch_size}
        (version / "network.json").write_text(json.dumps(spec, indent=2) + "\n")
        _write_env(version, env)
    (model_dir / "config.pbtxt").write_text(config_text)
    return model_dir / "config.pbtxt"


def triton_repo_cli(
    out_dir: str,
    detector: str | None = None,
    ranker: str | None = None,
    *,
    cpu: bool = False,
    no_ranker: bool | None = None,
    server_env: str | None = None,
    max_batch: int = 8,
    instances: int = 1,
    python_instances: int = 1,
    tile: str = "auto",
    score_thr: float | None = None,
    force: bool = False,
) -> TritonRepo:
    """What ``rfdeploy triton-repo OUT [DETECTOR] [--ranker RANKER] [--no-ranker] [--cpu]
    [--server-env DIR] [--max-batch B] [--instances N] [--python-instances N] [--tile auto|off|SIZE]
    [--score-thr T] [--force]`` does. ``no_ranker`` None: as ``write_triton_repo``'s ``use_ranker``
    None (the ranker only when one is given)."""
    use_ranker = None if no_ranker is None else not no_ranker
    return write_triton_repo(out_dir, detector, ranker, cpu=cpu, use_ranker=use_ranker, server_env=server_env,
                             max_batch=max_batch, instances=instances, python_instances=python_instances, tile=tile,
                             score_thr=score_thr, overwrite=force)
