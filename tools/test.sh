#!/usr/bin/env bash
# The test command of the README (and of CI): set up, then run the CPU test suite, then the SGLang tier in its own
# venv (SGLang pins a different torch than the main venv; tools/setup_sglang_env.sh builds it).
# GPU tests (marker `gpu`) are skipped here with a stated reason; see tests/gpu/README.md to run them on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
. .venv/bin/activate
# One thread per process: the multi-rank tests start several processes on a 2-core machine, and oversubscribed
# OpenMP threads made them 10-40x slower (measured).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
python -m pytest -q "$@"
if [ -f tools/setup_sglang_env.sh ] && [ -d tests/sglang ] && [ -z "${SKIP_SGLANG:-}" ]; then
  bash tools/setup_sglang_env.sh
  .venv-sglang/bin/python -m pytest -q tests/sglang
fi
