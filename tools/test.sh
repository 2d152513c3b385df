#!/usr/bin/env bash
# The test command of the README (and of CI): set up, then run the CPU test suite, then the SGLang tier in its own
# venv (SGLang pins a different torch than the main venv; tools/setup_sglang_env.sh builds it).
# GPU tests (marker `gpu`) are skipped here with a stated reason; see tests/gpu/README.md to run them on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
. .venv/bin/activate
python -m pytest -q "$@"
if [ -f tools/setup_sglang_env.sh ] && [ -d tests/sglang ] && [ -z "${SKIP_SGLANG:-}" ]; then
  bash tools/setup_sglang_env.sh
  .venv-sglang/bin/python -m pytest -q tests/sglang
fi
