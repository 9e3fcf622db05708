"""Triton on the CPU: requests per second and median latency of the bundled models served by
nvidia-pytriton's tritonserver (CPU repository, HTTP, one encoded VGA image per request) with 1
and 4 concurrent clients, against ``rfdeploy infer``'s own time per image (FacePipeline.process_path,
the same models on onnxruntime) measured in the same run on the same machine.

    python benchmarks/triton_cpu.py [--server-env .venv-triton] [--requests 24] [--python-instances 2]

Loopback only; the server is stopped at the end. Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_PHOTO = ROOT.parent / "shared" / "data" / "realfaces" / "dev" / "insightface_t1.jpg"


def vga_image(folder: Path) -> Path:
    """A 640x480 JPEG: a real group photo when the shared data is here, else the bundled example."""
    from PIL import Image, ImageOps

    src = SHARED_PHOTO if SHARED_PHOTO.is_file() else ROOT / "rfdeploy" / "assets" / "astronaut.jpg"
    out = folder / "vga.jpg"
    ImageOps.fit(Image.open(src).convert("RGB"), (640, 480)).save(out, quality=90)
    return out


def infer_ms(image: Path, runs: int) -> tuple[float, int]:
    """Median wall time of infer's per-image work (decode .. NMS), after two warm-up runs."""
    from rfdeploy.runtime.pipeline import FacePipeline

    pipe = FacePipeline.create(backend="onnxruntime", use_ranker=True)
    for _ in range(2):
        rec = pipe.process_path(image)
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        pipe.process_path(image)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000, len(rec["faces"])


def serve_load(url: str, payload: np.ndarray, clients: int, requests: int, timeout: float) -> dict:
    """``requests`` requests spread over ``clients`` threads (one HTTP client each)."""
    import tritonclient.http as httpclient

    def one_client(n: int) -> list[float]:
        client = httpclient.InferenceServerClient(url, network_timeout=timeout, connection_timeout=timeout)
        image = httpclient.InferInput("IMAGE", [payload.size], "UINT8")
        image.set_data_from_numpy(payload)
        lat = []
        try:
            for _ in range(n):
                t = time.perf_counter()
                client.infer("rfdeploy_faces", [image])
                lat.append(time.perf_counter() - t)
        finally:
            client.close()
        return lat

    share = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(one_client, n) for n in share]
        done, pending = wait(futures, timeout=timeout * max(share))
    wall = time.perf_counter() - t0
    if pending:
        raise SystemExit(f"{len(pending)} clients did not finish within the time limit")
    lat = [x for f in futures for x in f.result()]
    return {"clients": clients, "requests": len(lat), "rps": len(lat) / wall, "median_ms": statistics.median(lat) * 1000}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server-env", default=str(ROOT / ".venv-triton"))
    ap.add_argument("--requests", type=int, default=24, help="requests per concurrency level")
    ap.add_argument("--infer-runs", type=int, default=12)
    ap.add_argument("--python-instances", type=int, default=2, help="instances of the faces model")
    ap.add_argument("--instances", type=int, default=1, help="instances of each network model")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    args = ap.parse_args()

    from rfdeploy.deploy.triton import write_triton_repo
    from rfdeploy.deploy.triton_server import TritonServer

    with tempfile.TemporaryDirectory(prefix="rfdeploy-bench-") as tmp:
        tmp = Path(tmp)
        image = vga_image(tmp)
        payload = np.fromfile(image, np.uint8)
        infer, faces = infer_ms(image, args.infer_runs)
        repo = write_triton_repo(tmp / "repo", cpu=True, use_ranker=True, server_env=args.server_env,
                                 python_instances=args.python_instances, instances=args.instances)
        with TritonServer(repo.path, args.server_env) as server:
            serve_load(server.http_url, payload, 1, 2, args.timeout)  # warm-up
            rows = [serve_load(server.http_url, payload, c, args.requests, args.timeout) for c in (1, 4)]
    print(f"VGA 640x480, {faces} faces; rfdeploy infer (same models, onnxruntime, in process): "
          f"{infer:.0f} ms per image = {1000 / infer:.2f} images/s")
    print(f"Triton CPU repository: faces model x{args.python_instances}, networks x{args.instances}, HTTP\n")
    print("| clients | requests | requests/s | median latency ms | latency / infer |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['rps']:.2f} | {r['median_ms']:.0f} | {r['median_ms'] / infer:.2f}x |")
    print(json.dumps({"infer_ms": infer, "faces": faces, "serving": rows, "python_instances": args.python_instances,
                      "instances": args.instances}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
