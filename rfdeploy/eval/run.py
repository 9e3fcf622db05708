"""Evaluation entry points for the command line: files in, a result dict (and an optional plot) out."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from rfdeploy.core.detections import Detections
from rfdeploy.core.errors import InputError
from rfdeploy.core.image_io import load_image
from rfdeploy.eval.ap import DEFAULT_IOU_THRESHOLDS, evaluate_detections, format_report, load_annotations
from rfdeploy.eval.plot import curves_from_result, save_pr_plot
from rfdeploy.eval.wider import evaluate_wider
from rfdeploy.runtime.adapters import OnnxDetector


def _read_records(path: Path):
    """A JSON document, or the JSON lines `rfdeploy infer --out` and `rfdeploy batch` write
    (one object per line) as a list."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise InputError(f"predictions file not found: {path}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read predictions file {path}: {e}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as whole:
        lines = [(i, ln) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]
        if len(lines) < 2:
            raise InputError(f"predictions file {path} is not JSON: {whole}", hint=PREDICTIONS_HELP) from None
    records = []
    for i, ln in lines:
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}, line {i}: not a JSON object ({e})", hint=PREDICTIONS_HELP) from None
        if not isinstance(rec, dict) or "file" not in rec:
            raise InputError(f"{path}, line {i}: expected a record with 'file' and 'faces'", hint=PREDICTIONS_HELP)
        records.append(rec)
    return records


PREDICTIONS_HELP = ("give the JSON lines of `rfdeploy infer --out` or `rfdeploy batch`, "
                    "or a JSON object {file: [{box: [x1, y1, x2, y2], score}]}")


def _detections(dets, where: str) -> Detections:
    try:
        boxes = np.asarray([d["box"] for d in dets], np.float32).reshape(-1, 4)
        scores = np.asarray([d["score"] for d in dets], np.float32)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{where}: detections need 'box' [4 numbers] and 'score' ({e})") from e
    return Detections(boxes, scores)


def load_prediction_records(path: str | os.PathLike) -> tuple[dict[str, Detections], dict[str, str]]:
    """``(detections by file, errors by file)`` from a predictions file, as the files are named there.

    Formats: the JSON lines of `rfdeploy infer --out` / `rfdeploy batch` (``{"file", "faces":
    [{"box", "score", ...}]}`` per line, error records ``{"file", "error"}``), one such record list
    as a JSON array, ``{"images": [{"file", "faces" or "detections"}]}``, or ``{file: [{"box",
    "score"}]}``.
    """
    path = Path(path)
    data = _read_records(path)
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        data = data["images"]
    errors: dict[str, str] = {}
    out: dict[str, Detections] = {}
    if isinstance(data, list):
        for k, rec in enumerate(data):
            if not isinstance(rec, dict) or "file" not in rec:
                raise InputError(f"{path}: record #{k} has no 'file'", hint=PREDICTIONS_HELP)
            file = str(rec["file"])
            if file in out or file in errors:
                raise InputError(f"{path}: {file!r} appears twice")
            if "error" in rec:
                errors[file] = str(rec["error"])
                continue
            dets = rec.get("faces", rec.get("detections"))
            if dets is None:
                raise InputError(f"{path}: the record of {file!r} has neither 'faces' nor 'error'", hint=PREDICTIONS_HELP)
            out[file] = _detections(dets, f"{path}: {file!r}")
        return out, errors
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected JSON lines or a JSON object of file -> detections", hint=PREDICTIONS_HELP)
    for file, dets in data.items():
        out[str(file)] = _detections(dets, f"{path}: {file!r}")
    return out, errors


def load_predictions_json(path: str | os.PathLike) -> dict[str, Detections]:
    """Detections by file as named in the predictions file (see :func:`load_prediction_records`)."""
    return load_prediction_records(path)[0]


def match_predictions(
    predictions: dict[str, Detections],
    ground_truth: Sequence[str],
    images_dir: str | os.PathLike | None,
) -> tuple[dict[str, Detections], list[str]]:
    """Key predictions by the annotation's file names: a prediction's path relative to
    ``images_dir`` first (``photos/sub/a.jpg`` -> ``sub/a.jpg``), else the name as written, else its
    file name when exactly one annotated file has it. Returns (matched, names that matched nothing)."""
    known = set(ground_truth)
    by_name: dict[str, list[str]] = {}
    for g in ground_truth:
        by_name.setdefault(Path(g).name, []).append(g)
    root = Path(images_dir).resolve() if images_dir is not None else None
    matched: dict[str, Detections] = {}
    unmatched: list[str] = []
    for file, dets in predictions.items():
        key = None
        if root is not None:
            try:
                rel = Path(file).resolve().relative_to(root).as_posix()
            except ValueError:
                rel = None
            key = rel if rel in known else None
        if key is None and file in known:
            key = file
        if key is None and len(by_name.get(Path(file).name, ())) == 1:
            key = by_name[Path(file).name][0]
        if key is None:
            unmatched.append(file)
        elif key in matched:
            raise InputError(f"two predictions match the annotated image {key!r} (the second: {file!r})")
        else:
            matched[key] = dets
    return matched, unmatched


def evaluate_prediction_file(
    gt_json: str | os.PathLike,
    predictions_json: str | os.PathLike,
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    plot_path: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
    allow_missing: bool = False,
) -> dict:
    """AP of a predictions file against an annotations JSON; ``result["report"]`` is a Markdown table.

    Predictions are matched to annotated files by :func:`match_predictions` (``images_dir``
    defaults to the annotation file's folder). An annotated image without a prediction (or whose
    record is an error) is an InputError naming it, unless ``allow_missing``: then it counts as an
    image with no detections and the report says how many. Predictions for images that are not
    annotated are left out and counted in ``result["unmatched"]``.
    """
    gt_json = Path(gt_json)
    names = [g.file for g in load_annotations(gt_json)]
    dets, errors = load_prediction_records(predictions_json)
    folder = images_dir if images_dir is not None else gt_json.parent
    matched, unmatched = match_predictions(dets, names, folder)
    failed = {}  # annotated name -> the error its record holds
    for f, e in errors.items():
        failed.update({k: e for k in match_predictions({f: None}, names, folder)[0]})
    missing = [n for n in names if n not in matched]
    if missing and not allow_missing:
        why = [f"{n} (its record is an error: {failed[n]})" if n in failed else n for n in missing[:5]]
        raise InputError(
            f"{len(missing)} of {len(names)} annotated image(s) have no prediction in {predictions_json}: "
            + ", ".join(why) + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""),
            hint="predictions are matched by path relative to --images, then by file name; "
            "pass --allow-missing to count these images as having no detections",
        )
    result = evaluate_detections(gt_json, matched, iou_thresholds)
    result["missing"], result["unmatched"] = missing, unmatched
    result = _finish(result, plot_path, "AP")
    notes = []
    if missing:
        notes.append(f"{len(missing)} annotated image(s) without a prediction counted as having no detections")
    if unmatched:
        notes.append(f"{len(unmatched)} prediction(s) for images not in the annotations left out")
    if notes:
        result["report"] += "\n\n" + "\n".join(f"note: {n}" for n in notes)
    return result


def evaluate_wider_folder(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    iou_thresh: float = 0.5,
    plot_path: str | os.PathLike | None = None,
) -> dict:
    """WIDER FACE Easy/Medium/Hard AP of a result folder (official protocol)."""

    result = evaluate_wider(pred_dir, gt_dir, iou_thresh=iou_thresh)
    result["report"] = "WIDER FACE val: " + ", ".join(f"{s} {result[s]:.4f}" for s in ("easy", "medium", "hard"))
    if result["missing"]:
        result["report"] += f" ({result['missing']} images had no result file)"
    if plot_path is not None:
        save_pr_plot(curves_from_result(result), plot_path, title="WIDER FACE val")
    return result


def evaluate_onnx_detector(
    onnx_path: str | os.PathLike,
    gt_json: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    adapter: str | None = None,
    long_side: int | None = None,
    nms_iou: float = 0.4,
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    plot_path: str | os.PathLike | None = None,
) -> dict:
    """Run a third-party ONNX detector on every annotated image and report its AP.

    Images are read from ``images_dir`` (default: the annotation file's folder). All detections
    down to the adapter's candidate threshold are kept after NMS, so the whole PR curve is measured.
    """
    gt_json = Path(gt_json)
    folder = Path(images_dir) if images_dir is not None else gt_json.parent
    options = {"long_side": long_side} if long_side is not None else {}
    detector = OnnxDetector(onnx_path, adapter=adapter, **options)
    predictions = {}
    for g in load_annotations(gt_json):
        try:
            rgb = load_image(folder / g.file).rgb  # decoded as `rfdeploy eval` decodes it
        except InputError as e:
            raise InputError(f"cannot read annotated image {folder / g.file}: {e.args[0]}", hint=e.hint) from None
        predictions[g.file] = detector.detect(rgb, nms_iou=nms_iou, score_thr=detector.adapter.score_threshold)
    result = evaluate_detections(gt_json, predictions, iou_thresholds)
    result["detector"] = detector.name
    return _finish(result, plot_path, f"{detector.name} AP")


def _finish(result: dict, plot_path, title: str) -> dict:
    result["report"] = format_report(result, title)
    if plot_path is not None:
        save_pr_plot(curves_from_result(result), plot_path,
                     title=f"{title}: {result['num_images']} images, {result['num_faces']} faces")
    return result
