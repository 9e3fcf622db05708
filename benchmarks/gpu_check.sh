#!/usr/bin/env bash
# Everything the GPU paths need proven, in one command on a machine with a CUDA GPU and this source
# tree (torch + torchvision, no TensorRT, no network, nothing installed: the tree is used through
# PYTHONPATH). Runs the CUDA tests, then the 8K benchmark (torch fp16, device pre/post-processing,
# batched vs one tile at a time, with and without CUDA graphs, peak GPU memory) and the VGA
# latency, and prints one summary table. About 8 minutes at most (each step has its own limit).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # OUT_DIR (default $OUT or ./gpu_check_out) keeps
#                                               # the pytest log and gpu_check.json
# Exit status: 0 all tests passed (goals missed are reported, not fatal), 1 a test failed or the
# benchmark broke, 5 no CUDA GPU (or no torch) here: nothing was run.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
OUT_DIR=${1:-${OUT:-$ROOT/gpu_check_out}}
TEST_LIMIT_S=${GPU_CHECK_TEST_LIMIT_S:-210}
BENCH_LIMIT_S=${GPU_CHECK_BENCH_LIMIT_S:-240}
export PYTHONPATH="$ROOT:$ROOT/tests${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

gpu=$("$PY" - <<'EOF' 2>&1
import sys
try:
    import torch
except Exception as e:  # noqa: BLE001
    print(f"torch is not importable with this Python ({e})"); sys.exit(5)
if not torch.cuda.is_available():
    print(f"no CUDA GPU is visible to torch {torch.__version__} (torch.cuda.is_available() is False)"); sys.exit(5)
print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF
)
status=$?
if [ $status -ne 0 ]; then
  echo "gpu_check: $gpu"
  echo "gpu_check: this check needs a CUDA GPU; nothing was run."
  exit 5
fi
echo "gpu_check: GPU $gpu"
mkdir -p "$OUT_DIR"

# The tests with CUDA parts, named one by one (the CPU tests of these files run in CI).
TESTS=(
  tests/runtime/test_torch_runner.py
  tests/engines/test_trt_runner_logic.py::test_torch_memory_takes_device_tensors_and_waits_for_the_current_stream
  tests/engines/test_trt_runner_logic.py::test_torch_memory_under_worker_threads
  tests/engines/test_trt_runner_logic.py::test_backend_runner_takes_device_tensors_only_where_torch_has_cuda
  tests/runtime/test_device_processing.py::test_gpu_pipeline_matches_cpu
  tests/runtime/test_device_processing.py::test_cuda_graph_replays_match_eager
)
echo "gpu_check: CUDA tests (limit ${TEST_LIMIT_S} s)"
t0=$SECONDS
timeout "$TEST_LIMIT_S" "$PY" -m pytest -q -p no:cacheprovider -rs "${TESTS[@]}" 2>&1 | tee "$OUT_DIR/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
tests_s=$((SECONDS - t0))
tests_line=$(grep -E "(passed|failed|error)" "$OUT_DIR/gpu_tests.log" | tail -1)

echo "gpu_check: 8K and VGA benchmark (limit ${BENCH_LIMIT_S} s)"
t0=$SECONDS
timeout "$BENCH_LIMIT_S" "$PY" benchmarks/large_image.py --gpu-only --vga --runs 5 --json "$OUT_DIR/gpu_check.json" \
  2>&1 | tee "$OUT_DIR/gpu_bench.log"
bench_rc=${PIPESTATUS[0]}
bench_s=$((SECONDS - t0))

echo
echo "=================================== gpu_check summary ==================================="
echo "GPU: $gpu"
printf '%-10s %-8s %6s s  %s\n' "CUDA tests" "$([ $tests_rc -eq 0 ] && echo ok || echo FAILED)" "$tests_s" "${tests_line:-no pytest summary (rc $tests_rc)}"
printf '%-10s %-8s %6s s  %s\n' "benchmark" "$([ $bench_rc -eq 0 ] && echo ok || echo FAILED)" "$bench_s" "rc $bench_rc$([ $bench_rc -eq 124 ] && echo ', ran past its limit')"
if [ -s "$OUT_DIR/gpu_check.json" ]; then
  "$PY" benchmarks/large_image.py --summary "$OUT_DIR/gpu_check.json"
fi
[ $tests_rc -eq 0 ] && [ $bench_rc -eq 0 ] && exit 0
exit 1
