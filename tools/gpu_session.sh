#!/usr/bin/env bash
# One session's GPU checks on the lent device, in the order that spends the least device time: the device tool
# carries at most 64 MiB per call and gives the machine back after 30 s idle, so each call carries one SGLang wheel
# part AND does GPU work that needs no SGLang, and the SGLang work runs as a background chain that later calls poll.
#
# HERE, once:  bash tools/gpu_tier.sh fetch && PYTHON=.venv-sglang/bin/python bash tools/gpu_sglang.sh fetch
# DEVICE, back to back (carry what each line names; OUT is the call's output folder):
#   1  bash tools/gpu_session.sh tier            carry [".whl/base", ".whl/sglang-gpu/p4"]   GPU tier without sampler/packing, <= 9 min
#   2  bash tools/gpu_session.sh kernels         carry [".whl/sglang-gpu/p1"]   sampler tests + host time, packing tests + bench
#   3  bash tools/gpu_session.sh tracking        carry [".whl/sglang-gpu/p2"]   GPU runs tracking CPU runs, fused log-probs
#   A session with no SGLang work carries only .whl/base, in its first call, and runs kernels, tracking and tier
#   (session 12: the four calls took ~1650 s of the 1800 s, the machine's start included).
#      (bash tools/gpu_session.sh sweep: the sampler's launch sweep, ~5 min, when a call has room; `parts`: keep the
#      carried part and do nothing else, for a call whose GPU work is not needed this session)
#   4  bash tools/gpu_session.sh sglang [S]      carry [".whl/sglang-gpu/p3"]   install, start the chain, wait for its
#                                                RL-step benchmark (at most S s)
#   5  bash tools/gpu_session.sh poll [S]        (no carry)  wait for the chain's end (at most S s, default 480), print
#                                                and return the logs; call it again until the status says "chain done"
# Each step prints the tails of every log so far; the logs also come back under $OUT. A step never fails the call
# (its status is printed as rc=N), so one broken test does not lose the logs of the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
  NVSHMEM_DISABLE_NVLS=1
[ -e megatron_rlvr/kernels ] || ln -s ../kernels megatron_rlvr/kernels
OUT=${OUT:-/tmp/gpu_out}; LOGS=/tmp/gpu_session_logs; mkdir -p "$OUT" "$LOGS" /tmp/parts

# A carried path is gone from the device's tree at the next call that does not carry it: keep each part in /tmp.
stash() { for p in .whl/sglang-gpu/p*; do [ -d "$p" ] && cp -r "$p" /tmp/parts/; done; echo "parts kept: $(ls /tmp/parts | tr '\n' ' ')"; }
# The device tool brings back at most 8 files per call: the logs travel as one archive (tar xzf logs.tgz here).
collect() { tar czf "$OUT/logs.tgz" -C "$LOGS" . 2>/dev/null; cp "$LOGS/status.log" "$OUT/" 2>/dev/null
  for f in "$LOGS"/*.log; do echo "=== $f"; grep -v "Capturing batches" "$f" | tail -n "${1:-25}"; done; }
# Wait until the chain's status log shows `pattern` or `secs` pass: a call returns as soon as what it waits for is
# there (each call's logs come back with it; a machine lost between calls loses only what had not come back yet).
wait_for() { local pattern=$1 secs=$2 t=0
  while [ "$t" -lt "$secs" ] && ! grep -q "$pattern" "$LOGS/status.log" 2>/dev/null; do sleep 10; t=$((t + 10)); done; }
step() { local name=$1 limit=$2; shift 2; timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1; echo "$name rc=$?" | tee -a "$LOGS/status.log"; }
PYTEST=(python3 -m pytest -q -p no:cacheprovider -o addopts="" -rfE --tb=short)

date -u; stash
# Whichever call carries .whl/base installs it; /tmp/site stays for the machine's later calls.
[ -d .whl/base ] && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/base/*.whl
case "${1:-}" in
tier)
  python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(), torch.cuda.device_count(), 'GPUs')"
  # The sampler, packing and tracking files run in their own steps (below): together the tier ran past one call's
  # limit. What is left took 489 s on an H200 in session 12 (12 tests), 5.3 min of it the float32 transformers
  # references, one process per shape; they now share one process (expect about 2-3 min less).
  step gpu_tier 560 "${PYTEST[@]}" --durations=12 -m gpu tests/gpu --ignore=tests/gpu/test_kernels_gpu.py \
    --ignore=tests/gpu/test_fast_launch_gpu.py --ignore=tests/gpu/test_packing_gpu.py \
    --ignore=tests/gpu/test_token_stats_gpu.py --ignore=tests/gpu/test_tracking_gpu.py \
    --ignore=tests/gpu/test_lean_tail_gpu.py  # in `kernels`; with it the tier ran past 560 s (session 12)
  collect 40 ;;
tracking)  # CPU-vs-GPU learning curves: ~1-2 min per test (each trains on both)
  # the fused log-prob kernels' bf16 run against the chunked path first (added in session 12, two GPU trainings),
  # then the CPU-vs-GPU tests (session 10: ~1-2 min each)
  step tracking_fused 300 "${PYTEST[@]}" --durations=5 -m gpu tests/gpu/test_tracking_gpu.py -k fused_log_prob
  step tracking 270 "${PYTEST[@]}" --durations=5 -m gpu tests/gpu/test_tracking_gpu.py -k "not fused_log_prob"
  collect 40 ;;
kernels)  # the sampler's GPU tests and its eager host time, then the packed-update tests and benchmark
  # (tools/gpu_packing.sh); session 12: 42 s, 110 s with every baseline (here none), 350 s
  step kernel_tests 150 "${PYTEST[@]}" --durations=8 -m gpu tests/gpu/test_kernels_gpu.py \
    tests/gpu/test_fast_launch_gpu.py tests/gpu/test_lean_tail_gpu.py
  step kernel_host 90 python3 tools/bench_kernels.py --batches 1,256 --compile-modes '' --no-flashinfer \
    --host-breakdown --out-dir "$LOGS"
  OUT=$LOGS step packing 340 bash tools/gpu_packing.sh
  collect 40 ;;
sweep)
  step kernel_sweep 340 python3 tools/bench_kernels.py --sweep --batches 64,128,256,512,1024 --out-dir "$OUT"
  collect 40 ;;
sglang)
  mkdir -p .whl/sglang-gpu && cp -r /tmp/parts/p* .whl/sglang-gpu/
  step sglang_install 240 bash tools/gpu_sglang.sh install
  # OUT=LOGS: what the chain writes (the 20-step run's metrics) travels in the later calls' archive
  OUT=$LOGS setsid nohup bash tools/gpu_session.sh chain > "$LOGS/chain.log" 2>&1 < /dev/null &
  wait_for "bench_train rc=" "${2:-420}"; collect 30 ;;
chain)  # background, started by `sglang`, most wanted first: the RL-step benchmark, the SGLang GPU tests (DLC and
        # policy-only engines in bf16 against float32), the sampler benchmark with its FlashInfer and torch.compile
        # baselines, then the 20-step colocated run
  step bench_train 900 python3 -m megatron_rlvr.cli bench train --engine sglang --steps 2 --embedded-steps 1 \
    --out /tmp/bench_train ${BENCH_ARGS:-}
  step sglang_gpu_tests 400 bash tools/gpu_sglang.sh test
  # FlashInfer (a baseline of the sampler benchmark) comes with the SGLang wheels
  step bench_kernels 300 python3 tools/bench_kernels.py --batches 1,32,256,512,1024 --compile-budget-s 45 --host-breakdown \
    --out-dir "$LOGS"
  step sglang_scale 400 "${PYTEST[@]}" -s tests/sglang/test_gpu_scale.py
  echo "chain done" | tee -a "$LOGS/status.log" ;;
parts)  # only keep the carried wheel part (a short call, when nothing else needs the GPU before the chain)
  ;;
poll)
  wait_for "chain done" "${2:-480}"; collect 30 ;;
*)
  sed -n '2,15p' "$0"; exit 2 ;;
esac
