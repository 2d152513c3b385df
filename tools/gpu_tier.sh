#!/usr/bin/env bash
# The GPU test tier and the training benchmark, on a machine with CUDA (the lent device: Python 3.12, torch 2.11,
# no network). Wheels the image lacks (megatron-core for cp312, psutil, rich, pyyaml) travel in .whl/:
#
#   HERE:    bash tools/gpu_tier.sh fetch                       # downloads cp312 wheels into .whl/ (git-ignored)
#   DEVICE:  bash tools/gpu_tier.sh [test|bench|all]            # carry [".whl"]; writes logs under $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(megatron-core==0.16.1 psutil rich markdown-it-py mdurl pygments pyyaml)
case "${1:-all}" in
fetch)
  mkdir -p .whl/base
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl/base "${WHEELS[@]}"
  ls -la .whl/base; exit 0 ;;
esac
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/base/*.whl
# Run from the source tree without installing (no network for a build): make `megatron_rlvr.kernels` resolve to
# the top-level kernels/ folder as setup.py's package_dir does.
[ -e megatron_rlvr/kernels ] || ln -s ../kernels megatron_rlvr/kernels
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(), torch.cuda.device_count(), 'GPUs')"
if [ "${1:-all}" != bench ]; then
  python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu -o addopts="" -rs 2>&1 | tee "$OUT/gpu_tests.log"
fi
if [ "${1:-all}" != test ]; then
  python3 -m megatron_rlvr.cli bench train --out "$OUT/bench_train" 2>&1 | tee "$OUT/bench_train.log"
fi
