#!/usr/bin/env bash
# One-shot GPU check, bounded to about 8 minutes on an H100 with a 16-core host and at most 8 files in
# $OUT (default ./gpu_check_out): build with the system g++, the CUDA and graph tests, then the GPU
# benchmarks, then one table of every GPU figure next to its goal (table.txt, from figures.jsonl).
# A failing step does not stop the next one; summary.txt has each step's status and time.
#   bash benchmarks/gpu_check.sh
# Reuses a carried build (torchcam_ops/_C*.so built for this torch and Python) when SKIP_BUILD=1.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
# The image's default C++ compiler links libstdc++ statically, and an extension built with it dies on
# its first C++ exception message; the system g++ does not.
export CXX="${CXX:-g++}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python3}"

step() { # name, seconds, command...: output to $OUT/name.txt, status to summary.txt
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "== $name: rc=$rc, $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
  tail -n 30 "$OUT/$name.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PYTHON" -c "import torch; print(torch.__version__, torch.version.cuda)"; } > "$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  step build 300 "$PYTHON" setup.py build_ext --inplace
fi
# 1. correctness: CUDA kernels against the CPU, explainers without host syncs, CUDA-graph replay,
#    compiled explainers; the CPU error path; the reliability and graph suites on this machine.
step tests 280 "$PYTHON" -X faulthandler -m pytest -q -rf --maxfail=30 -p no:cacheprovider tests/test_cuda.py \
  tests/test_graphs.py tests/test_reliability.py tests/test_extension.py
# 2. speed: explainers eager vs graphed vs the limit (goal: Grad-CAM ResNet-50 batch 1 graphed <= 1.3 ms, >= 3.5x)
FIGURES="$OUT/figures.jsonl"
rm -f "$FIGURES"
step bench_graphs 120 "$PYTHON" benchmarks/graphs.py --device cuda --batches 1,16 --figures "$FIGURES"
# 3. the fused ops against eager, compiled and the copy bandwidth (device time, CUDA graphs)
step bench_cam_ops 100 "$PYTHON" benchmarks/cam_ops.py --device cuda --repeats 30 --figures "$FIGURES" --profile
# 4. TSGB against a plain gradient and the rules as plain PyTorch
step bench_tsgb 100 "$PYTHON" benchmarks/tsgb.py --device cuda --repeats 10 --batches 1,16 --figures "$FIGURES" --profile
# 5. every figure next to its goal
"$PYTHON" benchmarks/gpu_summary.py "$FIGURES" --tests "$OUT/tests.txt" | tee "$OUT/table.txt"
echo "files in $OUT: $(ls "$OUT" | wc -l)"
