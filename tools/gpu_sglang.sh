#!/usr/bin/env bash
# Rollout stage, GPU validation of the SGLang DLC engine (issue 5) on the lent machine (no network there).
#
#   bash tools/gpu_sglang.sh fetch            # HERE: download cp312 wheels, trim sglang-kernel, split into parts
#   bash tools/gpu_sglang.sh install          # DEVICE: reassemble the parts and pip install them offline
#   bash tools/gpu_sglang.sh test             # DEVICE: the bf16 GPU tests of tests/sglang (a few minutes)
#   bash tools/gpu_sglang.sh bench [args]     # DEVICE: python -m megatron_rlvr.bench.rollout [args]
#
# Carrying (the device tool uploads at most 64 MiB per call; untracked ignored paths must be named in
# `carry`, and a path not carried again stays on the device's disk between consecutive warm calls):
# `fetch` prints one line per call, e.g.  carry=[".whl/sglang-gpu/p1"]  run: true
# then the last call:                     carry=[".whl/sglang-gpu/p3"]  run: bash tools/gpu_sglang.sh install && ...
#
# What is carried (fetch writes the list to .whl/sglang-gpu/WHEELS.txt): sglang==0.5.17 for Python 3.12
# (it pins torch 2.11.0, the image's torch), sglang-kernel==0.4.5 (built for CUDA 13, like the image's torch)
# without its FA3 flash-attention library (1.1 GB unpacked; the DLC engine runs attention_backend="triton" and
# never loads it), and the import closure pinned in tools/sglang_gpu_wheels.txt (what works in .venv-sglang,
# minus what the image has, plus flashinfer-python and torch_memory_saver, which the CUDA path imports). They
# install into /tmp/site, which later calls put first on PYTHONPATH. Verified on a lent H100 and H200
# (2026-11-23): five parts of <= 60 MiB, carried two at a time where they fit; see BENCHMARKS.md.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
D=.whl/sglang-gpu
PART_MB=${PART_MB:-54}  # + the working tree (~5 MiB) must stay under the 64 MiB a call carries
WHEEL_LIST=tools/sglang_gpu_wheels.txt  # pinned import closure, one NAME==VERSION per line

cmd="${1:-}"
shift || true
case "$cmd" in
fetch)
  PY=${PYTHON:-python3}
  rm -rf "$D" && mkdir -p "$D/full" "$D/trim"
  plat=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_34_x86_64
        --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
        --platform manylinux1_x86_64 --platform any)
  "$PY" -m pip download -q "${plat[@]}" -d "$D/full" "sglang==0.5.17" "sglang-kernel==0.4.5"
  # --no-deps with exact pins: resolving dependencies for cp312 would pull torch's CUDA wheels (some, e.g.
  # nvidia-cudnn-cu13, are not on the registry here) and fail the whole download.
  missing=()
  while read -r req; do
    [[ -z "$req" || "$req" == \#* ]] && continue
    "$PY" -m pip download -q "${plat[@]}" -d "$D/full" "$req" >/dev/null 2>&1 || missing+=("$req")
  done < "$WHEEL_LIST"
  if (( ${#missing[@]} )); then
    echo "[gpu_sglang] no cp312 wheel for: ${missing[*]}" >&2
    exit 1
  fi
  # Trim sglang-kernel: drop libraries over 100 MB (the FA3 flash-attention build) and the Blackwell (sm100)
  # build of the common ops (the lent GPUs are Hopper), keep every other op.
  "$PY" - "$D" <<'EOF'
import pathlib, subprocess, sys, shutil
d = pathlib.Path(sys.argv[1])
whl = next((d / "full").glob("sglang_kernel-*.whl"))
work = d / "unpacked"
subprocess.run([sys.executable, "-m", "wheel", "unpack", "-d", str(work), str(whl)], check=True)
root = next(work.iterdir())
for f in root.rglob("*.so*"):
    if f.stat().st_size > 100 * 2**20 or "sm100" in f.parts:
        print(f"[gpu_sglang] dropping {f.relative_to(root)} ({f.stat().st_size >> 20} MiB)")
        f.unlink()
subprocess.run([sys.executable, "-m", "wheel", "pack", "-d", str(d / "trim"), str(root)], check=True)
whl.unlink()
shutil.rmtree(work)
EOF
  mv "$D"/trim/*.whl "$D/full/"
  ls -la "$D/full" | awk '{print $5, $9}' > "$D/WHEELS.txt"
  # Pack wheels into parts of at most PART_MB (a wheel larger than that is split and re-joined on install).
  "$PY" - "$D" "$PART_MB" <<'EOF'
import pathlib, sys
d, cap = pathlib.Path(sys.argv[1]), int(sys.argv[2]) << 20
parts = []  # first-fit decreasing: [[size, [(name, bytes), ...]], ...]
for f in sorted((d / "full").glob("*.whl"), key=lambda p: -p.stat().st_size):
    data = f.read_bytes()
    chunks = [data[i:i + cap] for i in range(0, len(data), cap)]
    for k, c in enumerate(chunks):
        name = f.name if len(chunks) == 1 else f"{f.name}.chunk{k:02d}"
        part = next((p for p in parts if p[0] + len(c) <= cap), None)
        if part is None:
            part = [0, []]
            parts.append(part)
        part[0] += len(c)
        part[1].append((name, c))
parts = [items for _, items in parts]
for i, items in enumerate(parts, 1):
    p = d / f"p{i}"
    p.mkdir()
    for name, c in items:
        (p / name).write_bytes(c)
    mb = sum(len(c) for _, c in items) / 2**20
    print(f'[gpu_sglang] call {i}: carry=[".whl/sglang-gpu/p{i}"]  ({mb:.1f} MiB)')
EOF
  rm -rf "$D/full"
  echo "[gpu_sglang] then on the device, in the last call: bash tools/gpu_sglang.sh install && bash tools/gpu_sglang.sh test"
  ;;
install)
  mkdir -p "$D/wheels"
  for p in "$D"/p*; do cp "$p"/* "$D/wheels/" 2>/dev/null || true; done
  for first in "$D"/wheels/*.chunk00; do
    [[ -e "$first" ]] || continue
    base="${first%.chunk00}"
    cat "$base".chunk* > "$base" && rm -f "$base".chunk*
  done
  python -m pip list 2>/dev/null | grep -i -E "^(torch|triton|transformers|sglang|numpy) " || true
  python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$D"/wheels/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  # No network there for a build: use the source tree, with megatron_rlvr.kernels mapped as setup.py does.
  [ -e megatron_rlvr/kernels ] || ln -s ../kernels megatron_rlvr/kernels
  export PYTHONPATH="$REPO:$PYTHONPATH"
  python -c "import sglang, sgl_kernel, torch; print('sglang', sglang.__version__, 'torch', torch.__version__)"
  ;;
test|bench)
  [ -e megatron_rlvr/kernels ] || ln -s ../kernels megatron_rlvr/kernels
  export PYTHONPATH="$REPO:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  ;;&
test)
  # The bf16 GPU tests. The rest of tests/sglang compares with float32 transformers exactly; sgl_kernel's CUDA
  # rmsnorm has no fp32 kernel, so those fail at engine start-up on a GPU. They run on CPU in CI.
  python -m pytest -q -p no:cacheprovider tests/sglang/test_gpu_outputs.py tests/sglang/test_gpu_overlap.py "$@"
  ;;
bench)
  out="${OUT:-.}"
  python -m megatron_rlvr.bench.rollout "$@" | tee "$out/sglang_bench.txt"
  ;;
*)
  sed -n '2,9p' "$0"
  exit 2
  ;;
esac
