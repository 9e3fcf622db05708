"""Running the pipeline over many files: ordered results, per-file errors, atomic outputs."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from rfdeploy.core.detections import Detections
from rfdeploy.core.errors import InputError
from rfdeploy.core.fsutil import AtomicTextFile, atomic_path, is_among
from rfdeploy.core.image_io import load_image
from rfdeploy.runtime.pipeline import FacePipeline, error_record


@dataclass
class RunSummary:
    records: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.records if "error" in r]

    @property
    def faces(self) -> int:
        return sum(len(r.get("faces", ())) for r in self.records)


def _vis_format(src_path: Path) -> tuple[str, str]:
    """(file suffix, Pillow format) of the annotated copy: the input's own when Pillow can write
    it (PNG stays PNG, JPEG stays JPEG), else PNG."""
    from PIL import Image

    Image.init()
    suffix = src_path.suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        return ".png", "PNG"
    return suffix, fmt


def save_visualisation(record: dict, src_path: Path, out_dir: Path, overwrite: bool,
                       written: set | None = None) -> Path:
    """Annotated copy of an input image (boxes and scores), written atomically as
    <out_dir>/<name> in the input's format. ``written``: the copies this run has made so far
    (updated here), so two inputs of the same name from different folders never replace each
    other's copy, even with ``overwrite``."""
    import numpy as np

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot write into {out_dir}: {e.strerror or e}") from None
    suffix, fmt = _vis_format(src_path)
    dst = out_dir / f"{src_path.stem}{suffix}"
    if is_among(dst, [src_path]):
        raise InputError(f"the annotated copy of {src_path} would replace the image itself",
                         hint="give --save-vis a folder other than the input's")
    if written is not None and dst.resolve() in written:
        raise InputError(f"{dst} already holds the annotated copy of another input of the same name",
                         hint="run inputs of the same name from different folders separately")
    if dst.exists() and not overwrite:
        raise InputError(f"{dst} exists", hint="pass --overwrite to replace it")
    from PIL import Image

    img = Image.fromarray(load_image(src_path).rgb)
    faces = record["faces"]
    dets = Detections(np.array([f["box"] for f in faces]).reshape(-1, 4), np.array([f["score"] for f in faces]))
    options = {"quality": 92} if fmt in ("JPEG", "WEBP") else {}
    try:
        with atomic_path(dst) as tmp:
            dets.draw(img).save(tmp, format=fmt, **options)
    except (OSError, ValueError) as e:  # an encoder's limit (WebP's 16383 px), a full disk
        raise InputError(f"cannot write the annotated copy {dst}: {e}") from None
    if written is not None:
        written.add(dst.resolve())
    return dst


def run_files(pipeline: FacePipeline, paths: list[Path], *, workers: int = 1,
              on_record: Callable[[dict], None] | None = None) -> RunSummary:
    """Process files in input order; a bad file becomes an error record, the run goes on.

    With workers > 1, files run on a thread pool (onnxruntime and torch release the GIL); the
    results keep the input order, so they equal a one-worker run.
    """
    def one(p: Path) -> dict:
        try:
            return pipeline.process_path(p)
        except InputError as e:
            return error_record(p, e)
        except Exception as e:  # a model failure on one file must not lose the others' results
            return error_record(p, e)

    summary = RunSummary()
    if workers <= 1:
        for rec in map(one, paths):
            _collect(summary, rec, on_record)
        return summary
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for rec in pool.map(one, paths):  # map() yields in submission order
            _collect(summary, rec, on_record)
    except BaseException:
        # An interrupt (or a failing on_record) stops the run: queued files are dropped rather
        # than processed in the background until the interpreter can exit.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return summary


def _collect(summary: RunSummary, rec: dict, on_record: Callable[[dict], None] | None) -> None:
    summary.records.append(rec)
    if on_record is not None:
        on_record(rec)


def write_jsonl(records: Iterable[dict], path, overwrite: bool) -> None:
    with AtomicTextFile(path, overwrite) as out:
        for r in records:
            out.write_line(json.dumps(r, ensure_ascii=False))
