"""`rfdeploy batch` on a local Ray cluster (2 CPUs) with real images and a real detector."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rfdeploy.core.errors import BackendUnavailableError, InputError

ROOT = Path(__file__).resolve().parents[2]


def _strip(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "timings"}


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="ray is not installed (extra 'scale': pip install 'rfdeploy[scale]')")
    pytest.importorskip("ray.data", reason="ray[data] is not installed")
    # Workers import the test helpers (tests.deploy.retina) and this checkout's rfdeploy.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def images(shared_data, tmp_path_factory) -> Path:
    """A few real photos (copied: the shared folder stays read-only) plus broken files."""
    d = tmp_path_factory.mktemp("batch_in")
    dev = shared_data / "realfaces" / "dev"
    for name in ("skimage_astronaut.png", "pyfeat_multi_face.jpg", "pyfeat_free-mountain-vector-01.jpg",
                 "insightface_t1.jpg"):
        shutil.copy(dev / name, d / name)
    (d / "broken.jpg").write_bytes((dev / "insightface_t1.jpg").read_bytes()[:3000])  # truncated JPEG
    (d / "notes.png").write_text("not an image\n")
    (d / "empty.jpg").write_bytes(b"")
    return d


def test_batch_equals_in_process_pipeline_and_records_errors(ray_local, images, retina_onnx, tmp_path):
    from rfdeploy.core.image_io import iter_image_paths
    from rfdeploy.runtime.batch import run_batch
    from tests.deploy.retina import make_retina_pipeline

    out = tmp_path / "results.jsonl"
    report = run_batch(images, out, pipeline_factory=make_retina_pipeline, concurrency=2, batch_size=2)
    lines = out.read_text().splitlines()
    records = [json.loads(x) for x in lines]
    paths = [str(p) for p in iter_image_paths([images])]
    assert [r["file"] for r in records] == paths  # one record per image, input order
    assert report.images == 7 and report.failures == 3 and report.seconds > 0
    errors = {Path(r["file"]).name: r for r in records if "error" in r}
    assert sorted(errors) == ["broken.jpg", "empty.jpg", "notes.png"]
    assert all(r["error_type"] == "InputError" and r["error"] for r in errors.values())
    assert "empty file" in errors["empty.jpg"]["error"]

    # Same answers as the same pipeline called in this process.
    local = make_retina_pipeline()
    for rec in records:
        if "error" in rec:
            continue
        assert _strip(rec) == _strip(local.process_path(rec["file"]))
    by_name = {Path(r["file"]).name: r for r in records}
    assert len(by_name["skimage_astronaut.png"]["faces"]) == 1
    assert len(by_name["pyfeat_multi_face.jpg"]["faces"]) >= 3
    assert by_name["pyfeat_free-mountain-vector-01.jpg"]["faces"] == []
    assert "images/s" in report.summary() and "broken.jpg" in report.summary()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]  # no temp files left


def test_batch_reads_uris_as_bytes(ray_local, images, retina_onnx, tmp_path):
    from rfdeploy.runtime.batch import run_batch
    from tests.deploy.retina import make_retina_pipeline

    sub = tmp_path / "in"
    sub.mkdir()
    shutil.copy(images / "skimage_astronaut.png", sub / "a.png")
    (sub / "b.jpg").write_text("garbage")
    out = tmp_path / "r.jsonl"
    # local:// makes Ray Data read the bytes itself, as it would from s3:// or gs://
    report = run_batch(f"local://{sub}", out, pipeline_factory=make_retina_pipeline, concurrency=1)
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert report.images == 2 and report.failures == 1
    assert [Path(r["file"]).name for r in recs] == ["a.png", "b.jpg"]
    assert _strip(recs[0])["faces"] == make_retina_pipeline().process_path(images / "skimage_astronaut.png")["faces"]
    assert "error" in recs[1] and "rfdeploy-batch-" not in recs[1]["file"]


def test_batch_bad_arguments(tmp_path):
    from rfdeploy.runtime.batch import run_batch

    with pytest.raises(InputError):
        run_batch(tmp_path / "missing", tmp_path / "o.jsonl", pipeline_factory=lambda: None)
    with pytest.raises(InputError, match="output folder"):
        run_batch(tmp_path, tmp_path / "no" / "o.jsonl", pipeline_factory=lambda: None)
    with pytest.raises(InputError, match="concurrency"):
        run_batch(tmp_path, tmp_path / "o.jsonl", concurrency=0)


def test_missing_ray_is_a_clear_error(monkeypatch):
    import builtins

    from rfdeploy.runtime import batch

    real_import = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(BackendUnavailableError, match="Ray Data") as e:
        batch._import_ray()
    assert "rfdeploy[scale]" in str(e.value)
