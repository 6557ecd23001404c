#!/usr/bin/env bash
# One prepared run for the lent GPU machine (H100/H200): the GPU tests, then the benchmark; logs and JSON to $OUT.
# Prepare here first: ../shared/gpu/pack-onnxruntime-gpu.sh .ortgpu, and the pure-Python wheels the machine lacks:
#   pip wheel --no-deps grad-cam==1.5.5 ttach -w .whl
# (the EfficientNet-Lite0 weights do not fit beside the onnxruntime-gpu archive in the 64 MiB that travels, so the
# tests that need them skip there). Then: run(command="bash benchmarks/gpu_check.sh", carry=[".ortgpu", ".whl"]).
set -uo pipefail
OUT=${OUT:-/tmp/fusioncam-gpu-out}
mkdir -p "$OUT" /tmp/site
tar -xJf .ortgpu/onnxruntime-gpu-sm90.tar.xz -C /tmp/site || exit 1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import onnxruntime as o, cupy; print(o.__version__, o.get_available_providers(), cupy.cuda.runtime.getDeviceCount())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider -rs tests/kernels/test_kernels_cuda.py tests/runtime/test_runtime_cuda.py \
  tests/metrics/test_metrics_cuda.py tests/runtime/test_methods_cuda.py tests/runtime/test_batch_plan.py 2>&1 | tee "$OUT/gpu-tests.log"
# The benchmark includes the eager reference on the GPU (one masked forward per channel: ~10 s for K=2048).
timeout 280 python3 -m benchmarks.run --device cuda --throughput-n 8 32 --out "$OUT" 2>&1 \
  | grep -v "it/s\]" | tee "$OUT/bench.log"
