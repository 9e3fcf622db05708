"""Weight-average two checkpoints of the same model (one fine-tuned from the other).

A phase fine-tuned from the last one stays in its basin, so a point on the line between the two
can keep what each does best (here: the earlier phase's recall on composed scenes, the later
one's fewer false positives on real photos). Floating-point tensors are interpolated as
``(1 - alpha) * A + alpha * B``; integer tensors (BatchNorm step counters) are taken from B. The
config and metadata are B's, and the two configs must describe the same architecture.

    python training/average_checkpoints.py A.safetensors B.safetensors --alpha 0.5 -o OUT.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# the config fields that only steer inference or tiling, not the weights' shapes
_RUNTIME_FIELDS = {"output_score_threshold", "score_threshold", "nms_iou", "candidates", "tile_min_face",
                   "tile_max_face"}


def average(a: Path, b: Path, alpha: float, out: Path) -> int:
    from safetensors import safe_open
    from safetensors.torch import save

    from rfdeploy.core import metadata
    from rfdeploy.core.fsutil import atomic_write_bytes

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        meta_a, meta = fa.metadata() or {}, fb.metadata() or {}
        cfg_a, cfg_b = (json.loads(m.get(metadata.CONFIG, "{}")) for m in (meta_a, meta))
        arch = lambda c: {k: v for k, v in c.items() if k not in _RUNTIME_FIELDS}  # noqa: E731
        if arch(cfg_a) != arch(cfg_b):
            raise ValueError("the two checkpoints' configs describe different architectures")
        if set(fa.keys()) != set(fb.keys()):
            raise ValueError(f"different tensors: {sorted(set(fa.keys()) ^ set(fb.keys()))[:5]}")
        mixed = {}
        for name in fb.keys():
            ta, tb = fa.get_tensor(name), fb.get_tensor(name)
            if ta.shape != tb.shape:
                raise ValueError(f"{name}: shapes {tuple(ta.shape)} and {tuple(tb.shape)}")
            if tb.is_floating_point():
                mixed[name] = ((1 - alpha) * ta.float() + alpha * tb.float()).to(tb.dtype).contiguous()
            else:
                mixed[name] = tb.clone()
    # as save_checkpoint writes a checkpoint: canonical bytes, replaced in one step
    atomic_write_bytes(out, metadata.canonical_safetensors(save(mixed, metadata=meta)))
    return len(mixed)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--alpha", type=float, default=0.5, help="weight of B")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args(argv)
    from safetensors import SafetensorError

    try:
        n = average(args.a, args.b, args.alpha, args.out)
    except (ValueError, OSError, SafetensorError) as e:  # SafetensorError: not a safetensors file
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{n} tensors, alpha {args.alpha} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
