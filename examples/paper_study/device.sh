#!/usr/bin/env bash
# The study on the lent GPU machine (Python 3.12, torch 2.11, no network): install the carried wheels (built here by
# `bash tools/gpu_tier.sh fetch`; carry [".whl/base"]), then `python -m examples.paper_study run --out $OUT "$@"`.
#   bash examples/paper_study/device.sh --budget full --shard 0/2 --device cpu --deadline-min 8.5
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/paper_study_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/base/*.whl
[ -e megatron_rlvr/kernels ] || ln -s ../kernels megatron_rlvr/kernels
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import torch, os; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), os.cpu_count(), 'cores')"
python3 -m examples.paper_study run --out "$OUT" --results examples/paper_study/results "$@" 2>&1 | tee "$OUT/study.log"
