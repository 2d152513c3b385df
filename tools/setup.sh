#!/usr/bin/env bash
# Sets up a fresh machine: a venv in .venv with the CPU build of torch 2.13.0 (on local disk here; on other
# machines from PyPI) and megatron-rlvr with its test extras. Idempotent; prints nothing when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q --upgrade pip
  # torch first, pinned: an unpinned torch requirement would pull a multi-GB CUDA build.
  python -m pip install -q "torch==2.13.0" || python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
if ! python -c "import megatron_rlvr, megatron.core, nemo_run, math_verify" 2>/dev/null; then
  python -m pip install -q -e ".[test]"
fi
