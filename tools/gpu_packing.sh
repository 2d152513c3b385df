#!/usr/bin/env bash
# Packing / chunked log-probs on the lent GPU (issue 22, items 1-4): the GPU correctness tests, then the update stage
# at ragged lengths (padded vs packed vs the plain packed Megatron LM step). Same set-up as tools/gpu_tier.sh:
#
#   HERE:    bash tools/gpu_tier.sh fetch                 # cp312 wheels into .whl/base (git-ignored)
#   DEVICE:  bash tools/gpu_packing.sh                    # carry [".whl/base"]; logs under $OUT; ~4-6 minutes on an H200
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
# the wheels stay in /tmp/site between calls of one machine: a call that does not carry .whl/base reuses them
[ -d .whl/base ] && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/base/*.whl
[ -e megatron_rlvr/kernels ] || ln -s ../kernels megatron_rlvr/kernels
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(), torch.cuda.device_count(), 'GPUs')"
status=0  # a failing test must not hide the benchmark; the script's exit status is the tests'
python3 -m pytest -q -s -p no:cacheprovider -m gpu tests/gpu/test_packing_gpu.py tests/gpu/test_token_stats_gpu.py \
  -o addopts="" -rs 2>&1 \
  | tee "$OUT/packing_gpu_tests.log" || status=$?
python3 -m megatron_rlvr.cli bench train --response-lengths "${LENGTHS:-lognormal:median=1024,max=4096}" \
  --policy "${POLICY:-qwen3-1.7b}" --memory "${MEMORY:-qwen3-0.6b}" --prompts "${PROMPTS:-8}" --group-size 8 \
  --micro-batch-size 4 --max-tokens "${MAX_TOKENS:-16384}" --steps "${STEPS:-3}" --out "$OUT/bench_packing" 2>&1 \
  | tee "$OUT/bench_packing.log"
exit $status
