"""`rfdeploy batch`: the full pipeline over many images with Ray Data (extra ``scale``).

An actor pool runs the pipeline: each actor builds it once (models loaded once per actor) and
calls its ``process_path`` per image, so every record has the same schema as ``rfdeploy infer``'s
JSON lines. An image that fails becomes an error record; the job goes on. Records are collected,
sorted by input order, and written at once (temp file + rename): OUTPUT is complete or absent.

Local files (a directory, a glob, paths) are read by the actors from their paths, so on a
multi-node cluster they must be on a file system every node sees. URIs (``s3://...``, ``gs://...``,
anything with ``scheme://``) are read with ``ray.data.read_binary_files`` and their bytes are
handed to the pipeline through a temporary file on the worker.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rfdeploy.core.errors import PARTIAL_FAILURE_EXIT_CODE, BackendUnavailableError, InputError, RfdeployError
from rfdeploy.core.fsutil import atomic_write_text, is_among
from rfdeploy.core.image_io import iter_image_paths
from rfdeploy.runtime.pipeline import FacePipeline, error_record

PipelineFactory = Callable[[], Any]  # -> an object with process_path(path) -> dict


@dataclass
class BatchReport:
    output: Path
    images: int
    failures: int
    seconds: float
    failed_files: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        s = (f"{self.images} images in {self.seconds:.1f} s ({self.images_per_second:.2f} images/s), "
             f"{self.failures} failed; results in {self.output}")
        if self.failed_files:
            more = f" (+{len(self.failed_files) - 5} more)" if len(self.failed_files) > 5 else ""
            s += "\nfailed: " + ", ".join(self.failed_files[:5]) + more
        return s


def default_pipeline_factory(**options: Any) -> PipelineFactory:
    """``lambda: FacePipeline.create(**options)``, importable by Ray workers."""

    def make():
        return FacePipeline.create(**options)

    return make


def _is_uri(s: str) -> bool:
    return "://" in s and not s.startswith("file://")


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise BackendUnavailableError(
            f"Ray Data is not importable ({e}); `rfdeploy batch` needs it",
            hint="pip install 'rfdeploy[scale]'  (installs ray[data])",
        ) from e
    return ray


class PipelineActor:
    """Ray Data actor: one pipeline per actor, a batch of paths (or bytes) -> JSON record strings."""

    def __init__(self, factory: PipelineFactory):
        self.pipeline = factory()

    def _one(self, path: str, data: bytes | None) -> dict:
        try:
            return self.pipeline.process_path(path, data)
        except Exception as e:  # an unreadable image is a record, not the end of the job
            rec = error_record(path, e)  # the same record `infer` writes
            return {**rec, "file": path}

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        paths = [str(p) for p in batch["path"]]
        datas = batch["bytes"] if "bytes" in batch else [None] * len(paths)
        records = [json.dumps(self._one(p, None if d is None else bytes(d))) for p, d in zip(paths, datas)]
        return {"path": np.asarray(paths, dtype=object), "record": np.asarray(records, dtype=object)}


def _write_jsonl(out: Path, records: Sequence[dict]) -> None:
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in records))


def _unwrap_ray_error(e: BaseException) -> BaseException:
    """A failure inside an actor (e.g. a model that cannot load) arrives wrapped by Ray; give the
    user rfdeploy's own error when there is one."""
    seen = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, RfdeployError):
            return cur
        cur = getattr(cur, "cause", None) or cur.__cause__
    return e


def run_batch(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    pipeline_factory: PipelineFactory | None = None,
    pipeline_options: dict | None = None,
    ray_address: str | None = "local",
    num_gpus_per_worker: float = 0.0,
    num_cpus_per_worker: float = 1.0,
    concurrency: int = 1,
    batch_size: int = 4,
    recursive: bool = False,
    ray_init_kwargs: dict | None = None,
    overwrite: bool = False,
) -> BatchReport:
    """Run the pipeline over ``inputs`` on Ray and write one JSON line per image to ``output``.

    ``inputs``: directories, globs, files (expanded with ``iter_image_paths``), or URIs Ray Data
    reads (``s3://bucket/dir``). ``pipeline_factory``: builds the per-actor pipeline (default:
    ``FacePipeline.create(**pipeline_options)``). ``ray_address``: ``local`` (start a local Ray in
    this process), ``auto`` (join the running cluster) or ``ray://host:port``; when Ray is already
    initialised in this process it is used as is. ``concurrency``: actors; ``num_gpus_per_worker``:
    GPUs per actor (fractions share a GPU); ``batch_size``: images per actor call. An existing
    ``output`` is replaced only with ``overwrite``, and never when it is one of the inputs.
    """
    if concurrency < 1 or batch_size < 1:
        raise InputError("--concurrency and --batch-size must be >= 1")
    if num_gpus_per_worker < 0 or num_cpus_per_worker < 0:
        raise InputError("--num-gpus-per-worker must be >= 0")
    out = Path(output)
    if not out.parent.is_dir():
        raise InputError(f"output folder does not exist: {out.parent}")
    if out.is_dir():
        raise InputError(f"output {out} is a folder; give the results file's path")
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        raise InputError("no inputs given")
    uris = [str(i) for i in items if _is_uri(str(i))]
    local = [str(i)[len("file://"):] if str(i).startswith("file://") else i for i in items if not _is_uri(str(i))]
    if uris and local:
        raise InputError("mix of URIs and local paths; run them as separate jobs")
    paths: list[str] = []
    if local:
        paths = [str(p) for p in iter_image_paths(local, recursive=recursive)]
        if is_among(out, paths):
            raise InputError(f"output {out} is one of the input images",
                             hint="the results file comes last: rfdeploy batch INPUT... OUTPUT.jsonl")
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists", hint="pass --overwrite to replace it")

    factory = pipeline_factory or default_pipeline_factory(**(pipeline_options or {}))
    ray = _import_ray()
    started_here = False
    if not ray.is_initialized():
        kwargs = dict(ray_init_kwargs or {})
        if ray_address not in (None, "local"):
            kwargs["address"] = ray_address
        ray.init(**kwargs)
        started_here = True
    t0 = time.perf_counter()
    try:
        if uris:
            ds = ray.data.read_binary_files(uris, include_paths=True)
        else:
            ds = ray.data.from_items([{"path": p} for p in paths])
        ds = ds.map_batches(
            PipelineActor, fn_constructor_kwargs={"factory": factory}, batch_size=batch_size,
            concurrency=concurrency, num_gpus=num_gpus_per_worker or None, num_cpus=num_cpus_per_worker,
            batch_format="numpy",
        )
        rows = ds.take_all()
    except Exception as e:
        err = _unwrap_ray_error(e)
        if err is not e:
            raise err from e
        raise
    finally:
        if started_here:
            ray.shutdown()
    seconds = time.perf_counter() - t0
    by_path = {str(r["path"]): json.loads(r["record"]) for r in rows}
    order = paths if not uris else sorted(by_path)
    missing = [p for p in order if p not in by_path]
    if missing:
        raise RfdeployError(f"Ray returned no result for {len(missing)} inputs (first: {missing[0]})")
    records = [by_path[p] for p in order]
    _write_jsonl(out, records)
    failed = [r["file"] for r in records if "error" in r]
    return BatchReport(out, len(records), len(failed), seconds, failed)


def batch_cli(
    inputs: Sequence[str],
    output: str,
    *,
    ray_address: str = "local",
    num_gpus_per_worker: float = 0.0,
    concurrency: int = 1,
    batch_size: int = 4,
    recursive: bool = False,
    overwrite: bool = False,
    **pipeline_options: Any,
) -> tuple[BatchReport, int]:
    """What ``rfdeploy batch INPUT... OUTPUT [--ray-address auto|ray://...|local] [--num-gpus-per-worker F]
    [--concurrency N] [--batch-size B]`` does; ``pipeline_options`` go to ``FacePipeline.create``
    (detector, ranker, use_ranker, backend, device, tile, score_thr, ...). Returns the report and
    the exit code (0, or PARTIAL_FAILURE_EXIT_CODE when some images failed)."""

    report = run_batch(inputs, output, pipeline_options=pipeline_options, ray_address=ray_address,
                       num_gpus_per_worker=num_gpus_per_worker, concurrency=concurrency, batch_size=batch_size,
                       recursive=recursive, overwrite=overwrite)
    return report, (PARTIAL_FAILURE_EXIT_CODE if report.failures else 0)
