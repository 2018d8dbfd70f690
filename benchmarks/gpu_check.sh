#!/usr/bin/env bash
# One-shot GPU check: build the extension on the GPU machine, run the CUDA tests (and the rest of
# the suite), then the GPU benchmarks. Every step logs to $OUT (default ./gpu_check_out) and a
# failing step does not stop the next one. Usage: bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python3}"

step() { # name, command...
  local name=$1; shift
  local start=$SECONDS
  "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "== $name: rc=$rc, $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
  tail -n 25 "$OUT/$name.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; "$PYTHON" -c "import torch; print(torch.__version__, torch.version.cuda)"; } > "$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"
step build "$PYTHON" setup.py build_ext --inplace
step linkage bash -c "ldd torchcam_ops/_C*.so | grep -E 'gomp|stdc|c10'; ls \$($PYTHON -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib | grep -i -E 'omp|stdc'"
step cpu_error_path "$PYTHON" -X faulthandler -c "import torch, torchcam_ops
try:
    torchcam_ops.cam_postprocess(torch.rand(1, 3, 3), 0)
except ValueError as e:
    print('raised', e)"
step cuda_tests "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py
for file in tests/test_*.py; do
  name=$(basename "$file" .py)
  [ "$name" = test_cuda ] || step "all_$name" "$PYTHON" -X faulthandler -m pytest -q -p no:cacheprovider "$file"
done
step bench_fp32 "$PYTHON" benchmarks/cam_ops.py --device cuda --repeats 50
step bench_fp16 "$PYTHON" benchmarks/cam_ops.py --device cuda --dtype float16 --repeats 50 --no-compile
step bench_methods "$PYTHON" benchmarks/methods.py --device cuda
step bench_tsgb "$PYTHON" benchmarks/tsgb.py --device cuda --repeats 5
step evaluate_cuda "$PYTHON" -m torchcam_ops evaluate --benchmark localization --count 40 --device cuda \
  --methods gradcam,layercam,tsgb,gig_cam --out "$OUT/evaluate_cuda"
step evaluate_cpu_same_objects "$PYTHON" -m torchcam_ops evaluate --benchmark localization --count 40 --device cpu \
  --methods gradcam,layercam,tsgb,gig_cam --out "$OUT/evaluate_cpu"
