"""Find faces with rfdeploy's model on a Triton server: one JSON line per image, the record
``rfdeploy infer`` prints (``file``, ``width``, ``height``, ``faces: [{box, score, detector_score}]``).

    python examples/triton_client.py img.jpg [more.jpg ...] [--url 127.0.0.1:8000] [--grpc --url 127.0.0.1:8001]

Needs only ``tritonclient`` and numpy (``pip install "tritonclient[http]"``; ``nvidia-pytriton``
brings both). The image file is sent as it is (its encoded bytes); the server decodes it.
"""

import argparse
import json
import sys

import numpy as np

OUTPUTS = ("BOXES", "SCORES", "DETECTOR_SCORES", "IMAGE_SIZE")


def find_faces(client, protocol, path, model="rfdeploy_faces", timeout=None):
    """One image file -> its record. ``protocol``: tritonclient.http or tritonclient.grpc;
    ``timeout``: seconds (gRPC; the HTTP client takes it when it is made)."""
    data = np.fromfile(path, dtype=np.uint8)
    image = protocol.InferInput("IMAGE", [data.size], "UINT8")
    image.set_data_from_numpy(data)
    requested = [protocol.InferRequestedOutput(n) for n in OUTPUTS]
    extra = {"client_timeout": timeout} if timeout and protocol.__name__.endswith("grpc") else {}
    result = client.infer(model, [image], outputs=requested, **extra)
    boxes, scores, detector_scores, size = (result.as_numpy(n) for n in OUTPUTS)
    faces = [{"box": [round(float(v), 2) for v in box], "score": round(float(s), 4), "detector_score": round(float(d), 4)}
             for box, s, d in zip(boxes, scores, detector_scores)]
    return {"file": str(path), "width": int(size[0]), "height": int(size[1]), "faces": faces}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+")
    ap.add_argument("--url", default=None, help="server address (default 127.0.0.1:8000, or :8001 with --grpc)")
    ap.add_argument("--grpc", action="store_true", help="use gRPC instead of HTTP")
    ap.add_argument("--model", default="rfdeploy_faces")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per image (a large image on a busy CPU is slow)")
    args = ap.parse_args(argv)
    if args.grpc:
        import tritonclient.grpc as protocol
    else:
        import tritonclient.http as protocol
    from tritonclient.utils import InferenceServerException

    url = args.url or ("127.0.0.1:8001" if args.grpc else "127.0.0.1:8000")
    if args.grpc:
        client = protocol.InferenceServerClient(url)
    else:
        client = protocol.InferenceServerClient(url, connection_timeout=args.timeout, network_timeout=args.timeout)
    failed = 0
    for path in args.images:
        try:
            record = find_faces(client, protocol, path, args.model, args.timeout)
        except (InferenceServerException, OSError) as e:  # the server's message, one line per image
            failed += 1
            record = {"file": str(path), "error": str(e).splitlines()[0] if str(e) else type(e).__name__}
        print(json.dumps(record), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
