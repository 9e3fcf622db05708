#!/usr/bin/env bash
# Re-make the images the README and the model card show, from the bundled models:
#   docs/img/example_astronaut.jpg  what `rfdeploy infer --save-vis` draws (public-domain photo)
#   docs/img/pr_dev.png             `rfdeploy eval --plot` on the shared dev photos (a plot, no photo)
# Run it again whenever the bundled models change. The dev photos themselves are never committed.
#
#   bash benchmarks/make_doc_images.sh            # uses .venv/bin/rfdeploy and ../shared/data
#   RFDEPLOY=rfdeploy RFDEPLOY_SHARED_DATA=/data bash benchmarks/make_doc_images.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RFDEPLOY=${RFDEPLOY:-.venv/bin/rfdeploy}
DATA=${RFDEPLOY_SHARED_DATA:-../shared/data}
out=docs/img
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"

"$RFDEPLOY" infer rfdeploy/assets/astronaut.jpg --save-vis "$tmp/vis" --out "$tmp/astronaut.jsonl" -q
cp "$tmp/vis/astronaut.jpg" "$out/example_astronaut.jpg"
echo "wrote $out/example_astronaut.jpg: $(cat "$tmp/astronaut.jsonl")"

gt="$DATA/realfaces/dev/annotations.json"
if [[ -f "$gt" ]]; then
    "$RFDEPLOY" eval --gt "$gt" --plot "$tmp/pr.png" --json-out "$tmp/pr.json"
    cp "$tmp/pr.png" "$out/pr_dev.png"
    echo "wrote $out/pr_dev.png"
else
    echo "skipped $out/pr_dev.png: no dev set at $gt (set RFDEPLOY_SHARED_DATA)" >&2
fi
