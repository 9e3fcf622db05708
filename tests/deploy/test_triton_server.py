"""A real Triton server (PyPI nvidia-pytriton's tritonserver 2.51, Python backend) serving a CPU
repository of the bundled models: faces equal ``rfdeploy infer``'s, concurrent requests all come
back, bad requests fail alone. Loopback only; the server is always stopped (module fixture).

The server's environment is ``$RFDEPLOY_TRITON_ENV`` or ``.venv-triton`` beside the checkout
(``.ci/run`` creates it: ``python3 -m venv .venv-triton && .venv-triton/bin/pip install
nvidia-pytriton==0.7.0``); without it these tests skip, unless the variable names it.
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import pytest

from rfdeploy.core.errors import InputError

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ASTRONAUT = ROOT / "rfdeploy" / "assets" / "astronaut.jpg"
CLIENT = ROOT / "examples" / "triton_client.py"
SHARED = Path(os.environ.get("RFDEPLOY_SHARED_DATA", ROOT.parent / "shared" / "data"))
ENV_VAR = "RFDEPLOY_TRITON_ENV"
REQUEST_TIMEOUT_S = 300  # one request; a tiled image on a busy 2-core machine can take a minute


def _server_env() -> Path:
    from rfdeploy.deploy.triton_server import ServerInstall

    named = os.environ.get(ENV_VAR)
    path = Path(named) if named else ROOT / ".venv-triton"
    try:
        ServerInstall(path)
    except InputError as e:
        if named:
            pytest.fail(f"{ENV_VAR}={named}: {e}")
        pytest.skip(f"no Triton server environment at {path} ({e.args[0]}); create it with "
                    "python3 -m venv .venv-triton && .venv-triton/bin/pip install nvidia-pytriton==0.7.0")
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from rfdeploy.deploy.triton import write_triton_repo
    from rfdeploy.deploy.triton_server import TritonServer

    env = _server_env()
    repo = write_triton_repo(tmp_path_factory.mktemp("triton") / "repo", cpu=True, use_ranker=True, server_env=env,
                             python_instances=2)
    server = TritonServer(repo.path, env, startup_timeout=300)
    server.start()
    pgid = server.proc.pid
    try:
        yield server, env
    finally:
        server.stop()
    # nothing of it is left: no process of its group, no shared-memory region of its stubs
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert not list(Path("/dev/shm").glob(server.shm_prefix + "*"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """The bundled example; a wide upscale of it, long side 2200 px, which runs as a tile pyramid (4
    tiles: the fewest a tiled image takes); a real group photo when the shared data is here."""
    from PIL import Image

    wide = tmp_path_factory.mktemp("images") / "astronaut_wide.jpg"
    Image.open(ASTRONAUT).convert("RGB").resize((2200, 1000), Image.BILINEAR).save(wide, quality=95)
    group = SHARED / "realfaces" / "dev" / "insightface_t1.jpg"
    return [ASTRONAUT, wide] + ([group] if group.is_file() else [])


@pytest.fixture(scope="module")
def infer_records(images, tmp_path_factory) -> dict[str, dict]:
    """What ``rfdeploy infer`` prints for the same images (same bundled models, onnxruntime; the
    served repository holds the ranker, so infer runs it too)."""
    from click.testing import CliRunner

    from rfdeploy.cli import main

    out = tmp_path_factory.mktemp("infer") / "faces.jsonl"
    res = CliRunner().invoke(main, ["infer", *map(str, images), "--with-ranker", "--backend", "onnxruntime", "--out", str(out)])
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return {Path(r["file"]).name: r for r in records}


def _client(server_env: Path, *args: str) -> tuple[list[dict], subprocess.CompletedProcess]:
    """The documented client example, run with the server environment's Python (tritonclient and
    numpy only, no rfdeploy)."""
    proc = subprocess.run([str(server_env / "bin" / "python"), str(CLIENT), *args], capture_output=True, text=True,
                          timeout=REQUEST_TIMEOUT_S * 3, cwd=ROOT)
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return records, proc


def _assert_same_faces(got: dict, want: dict):
    assert (got["width"], got["height"]) == (want["width"], want["height"])
    assert len(got["faces"]) == len(want["faces"]), (got["faces"], want["faces"])
    if want["faces"]:
        # both are rounded as infer rounds (boxes 2 decimals, scores 4)
        np.testing.assert_allclose([f["box"] for f in got["faces"]], [f["box"] for f in want["faces"]], atol=0.02)
        np.testing.assert_allclose([f["score"] for f in got["faces"]], [f["score"] for f in want["faces"]], atol=2e-4)
        np.testing.assert_allclose([f["detector_score"] for f in got["faces"]],
                                   [f["detector_score"] for f in want["faces"]], atol=2e-4)


def test_served_faces_equal_infer_over_http_and_grpc(served, images, infer_records):
    server, env = served
    records, proc = _client(env, *map(str, images), "--url", server.http_url)
    assert proc.returncode == 0, proc.stderr + server.log_tail()
    assert [Path(r["file"]).name for r in records] == [p.name for p in images]
    assert sum(len(r["faces"]) for r in records) > 0
    for r in records:
        _assert_same_faces(r, infer_records[Path(r["file"]).name])

    grpc, proc = _client(env, str(images[0]), "--grpc", "--url", server.grpc_url)
    assert proc.returncode == 0, proc.stderr
    _assert_same_faces(grpc[0], infer_records[images[0].name])


def _http(server):
    import tritonclient.http as httpclient

    return httpclient, httpclient.InferenceServerClient(server.http_url, network_timeout=REQUEST_TIMEOUT_S,
                                                        connection_timeout=REQUEST_TIMEOUT_S)


def _send(server, data: np.ndarray, dtype: str = "UINT8"):
    httpclient, client = _http(server)
    try:
        image = httpclient.InferInput("IMAGE", list(data.shape), dtype)
        image.set_data_from_numpy(data)
        result = client.infer("rfdeploy_faces", [image])
        return {n: result.as_numpy(n) for n in ("BOXES", "SCORES", "IMAGE_SIZE")}
    finally:
        client.close()


def test_concurrent_requests_are_all_answered(served, tmp_path):
    from PIL import Image

    server, _ = served
    crop = tmp_path / "crop.png"  # a second, differently sized image: answers cannot pass for each other
    Image.open(ASTRONAUT).crop((96, 0, 416, 256)).save(crop)
    payloads = [np.fromfile(p, np.uint8) for p in (ASTRONAUT, crop)]
    sizes = [[512, 512], [320, 256]]
    alone = [_send(server, d) for d in payloads]
    jobs = [i % 2 for i in range(8)]  # 8 requests from 4 clients at once
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(_send, server, payloads[j]) for j in jobs]
        done, pending = wait(futures, timeout=REQUEST_TIMEOUT_S * 3)
        for f in pending:
            f.cancel()
    assert not pending, f"{len(pending)} of {len(futures)} requests unanswered"
    for j, f in zip(jobs, futures):
        got = f.result()  # raises for an error response
        assert got["IMAGE_SIZE"].tolist() == sizes[j]  # each answer belongs to its own request
        np.testing.assert_allclose(got["BOXES"], alone[j]["BOXES"], atol=1e-3)
        np.testing.assert_allclose(got["SCORES"], alone[j]["SCORES"], atol=1e-5)


def test_bad_requests_get_errors_and_the_server_keeps_serving(served):
    from tritonclient.utils import InferenceServerException

    server, _ = served
    with pytest.raises(InferenceServerException, match="InputError"):
        _send(server, np.frombuffer(b"this is not an image, only text", np.uint8))
    with pytest.raises(InferenceServerException, match="FP32.*UINT8"):
        _send(server, np.zeros(64, np.float32), dtype="FP32")
    with pytest.raises(InferenceServerException, match="(?i)shape|dims"):
        _send(server, np.zeros((2, 64), np.uint8))
    good = _send(server, np.fromfile(ASTRONAUT, np.uint8))
    assert good["IMAGE_SIZE"].tolist() == [512, 512] and len(good["BOXES"]) > 0
    assert server.alive()


def test_the_example_client_reports_a_bad_file(served, tmp_path):
    server, env = served
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    records, proc = _client(env, str(bad), str(ASTRONAUT), "--url", server.http_url)
    assert proc.returncode == 1
    assert "InputError" in records[0]["error"] and records[1]["width"] == 512
