#!/usr/bin/env bash
# Rollout stage, environment: create the SGLang virtual environment used by tests/sglang/ (CI calls this).
#
#   bash tools/setup_sglang_env.sh [VENV_DIR]      # default: <repo>/.venv-sglang
#
# Why a second venv: SGLang 0.5.17 pins torch==2.11.0 (the torch of the lent GPU image) and
# transformers==5.12.1, while the main venv carries torch 2.13 / megatron-core. One SGLang version is
# pinned because its weight-update API changes between releases (see shared/SGLANG-NOTES.md).
#
# SGLang is installed with --no-deps: its full requirement list pulls ~1.6 GB of CUDA-only kernels
# (flashinfer, flash-attn-4, sgl-kernel, deep-gemm, tilelang, ...) that neither import on nor serve a
# CPU machine. SGLANG_IMPORT_DEPS below is the set its engine import chain actually needs on CPU.
# `sgl_kernel` itself is satisfied in the test environment only (tests/sglang/_sgl_kernel_stub).
#
# The script is idempotent: re-running it on a complete venv only re-checks the imports.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$REPO/.venv-sglang}"
PYTHON="${PYTHON:-python3.11}"

SGLANG_VERSION="0.5.17"
TORCH_PINS=("torch==2.11.0" "torchvision==0.26.0" "transformers==5.12.1")
# What `import sglang.srt.entrypoints.engine` and a CPU engine run need (found by iterating on ImportErrors
# from a bare venv), pinned where sglang 0.5.17 pins them.
SGLANG_IMPORT_DEPS=(
  "numpy" "IPython" "dill" "apache-tvm-ffi==0.1.11" "sentencepiece" "compressed-tensors" "gguf"
  "openai==2.6.1" "partial-json-parser" "xgrammar==0.2.1" "aiohttp" "fastapi" "uvicorn" "uvloop"
  "pyzmq>=25.1.2" "orjson" "msgspec" "pybase64" "python-multipart" "prometheus-client>=0.20.0" "psutil"
  "setproctitle" "requests" "tqdm" "pillow" "einops" "interegular" "xxhash" "zstandard" "scipy"
  "watchfiles" "packaging" "pydantic" "blobfile==3.0.0" "llguidance>=1.7.6,<2.0.0" "tiktoken" "distro"
  "nvidia-ml-py" "soundfile==0.13.1" "pytest" "pytest-timeout"
  "jsonschema"  # sglang.launch_server (dedicated rollout servers: python -m megatron_rlvr.rollout.server)
)
# What megatron_rlvr needs to train with `rollout.engine=sglang` in this interpreter (megatron-core supports
# torch >= 2.6, so it sits beside SGLang's torch 2.11).
PROJECT_DEPS=("pyyaml" "safetensors" "rich" "megatron-core==0.16.1" "tensorboard" "matplotlib" "math-verify"
              "pyarrow")

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup_sglang_env] creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip wheel
fi
PIP=("$VENV/bin/python" -m pip install -q)

have() { "$VENV/bin/python" - "$@" <<'EOF' 2>/dev/null
import importlib.metadata as md, sys
name, want = sys.argv[1], sys.argv[2]
sys.exit(0 if md.version(name) == want else 1)
EOF
}

if ! have torch 2.11.0 || ! have transformers 5.12.1; then
  echo "[setup_sglang_env] installing ${TORCH_PINS[*]} (several GB: torch from the registry ships CUDA libraries)"
  "${PIP[@]}" "${TORCH_PINS[@]}"
fi
if ! have sglang "$SGLANG_VERSION"; then
  echo "[setup_sglang_env] installing sglang==$SGLANG_VERSION --no-deps"
  "${PIP[@]}" --no-deps "sglang==$SGLANG_VERSION"
fi
echo "[setup_sglang_env] installing sglang's CPU import closure and the project's import deps"
# The torch pins ride along so that no dependency can move torch or transformers off them.
"${PIP[@]}" "${SGLANG_IMPORT_DEPS[@]}" "${PROJECT_DEPS[@]}" "${TORCH_PINS[@]}"
"${PIP[@]}" --no-deps -e "$REPO"

echo "[setup_sglang_env] checking imports"
# The import-only sgl_kernel stand-in joins the path only when no real sgl_kernel imports (never shadows one).
STUB_PATH=""
if ! "$VENV/bin/python" -c "import sgl_kernel" 2>/dev/null; then STUB_PATH="$REPO/tests/sglang/_sgl_kernel_stub"; fi
SGLANG_USE_CPU_ENGINE=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$STUB_PATH" \
  "$VENV/bin/python" -c "
import torch, transformers, sglang
from sglang.srt.entrypoints.engine import Engine  # noqa: F401  (the whole engine import chain)
import megatron_rlvr.rollout.sglang  # noqa: F401
import megatron.core, megatron_rlvr.train  # noqa: F401  (the trainer runs here with rollout.engine=sglang)
print('sglang', sglang.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)
"
echo "[setup_sglang_env] ready: $VENV"
