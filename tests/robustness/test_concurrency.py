"""`infer --workers N` gives the one-worker results, in input order; an interrupt stops the pool."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

from robust_helpers import ASTRONAUT, HOPPER, run_cli, small_image, tiny_args


def _without_timings(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "timings_ms"} for r in recs]


def test_three_workers_equal_one_worker(tiny_ckpt, photo_dir, tmp_path):
    # different sizes (so files take different times and finish out of order) and one bad file
    small_image(ASTRONAUT, photo_dir / "e_astronaut_big.jpg", (224, 192))
    small_image(HOPPER, photo_dir / "f_hopper_tiny.png", (40, 48))
    (photo_dir / "g_bad.jpg").write_bytes(HOPPER.read_bytes()[:3000])
    outs = {}
    for w in (1, 3):
        out = tmp_path / f"w{w}.jsonl"
        res = run_cli("infer", photo_dir, *tiny_args(tiny_ckpt), "--out", out, "--workers", str(w), "-q")
        assert res.exit_code == 7, res.output
        outs[w] = [json.loads(line) for line in out.read_text().splitlines()]
    one, three = _without_timings(outs[1]), _without_timings(outs[3])
    assert [r["file"] for r in one] == [str(p) for p in sorted(photo_dir.iterdir())]
    assert sum(len(r.get("faces", ())) for r in one) > 20  # a comparison of something
    assert three == one


def _pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ThreadPoolExecutor") and t.is_alive()]


def test_interrupt_with_workers_cancels_the_queued_files(tiny_ckpt, photo_dir, tmp_path, monkeypatch):
    from rfdeploy.runtime.pipeline import FacePipeline

    for i in range(12):
        shutil.copy(photo_dir / "d_astronaut.jpg", photo_dir / f"z{i:02d}.jpg")
    real = FacePipeline.process_path
    calls: list[str] = []
    lock = threading.Lock()

    def interrupt_second(self, path):
        with lock:
            calls.append(Path(path).name)
        if Path(path).name == "b_astronaut.png":
            raise KeyboardInterrupt
        return real(self, path)

    monkeypatch.setattr(FacePipeline, "process_path", interrupt_second)
    before = set(_pool_threads())
    out = tmp_path / "res.jsonl"
    res = run_cli("infer", photo_dir, *tiny_args(tiny_ckpt), "--out", out, "--workers", "2", "-q")
    assert res.exit_code == 130, res.output
    assert not out.exists()
    # no worker is left running (or waiting for) the remaining files once the run has returned
    assert set(_pool_threads()) <= before
    assert len(calls) < 16, calls
