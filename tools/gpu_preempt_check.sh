#!/bin/bash
# GPU check of preemption over NCCL (2 GPUs): the stop request is all-reduced over NCCL and the resumed checkpoint
# is chosen by rank 0 and broadcast. An uninterrupted 6-step run, then the same run sent SIGUSR1 mid-run (every
# rank must checkpoint and exit 75), resumed, and compared step by step. About 3-4 minutes on 2 H200.
#   bash tools/gpu_preempt_check.sh [FOLDER]
set -u
nproc=${NPROC:-2}; dir=${1:-/tmp/gpu_preempt_check}
rm -rf "$dir"; mkdir -p "$dir"
opts=(steps=6 checkpoint.save_interval=0 checkpoint.export_hf=false logging.progress=false logging.tensorboard=false
      logging.plots=false eval.interval=0 "warm_start.cache_dir=$dir/cache")
train() { python -m torch.distributed.run --nproc-per-node "$nproc" -m megatron_rlvr.cli train "$@" "${opts[@]}"; }
train "run_dir=$dir/ref" >"$dir/ref.log" 2>&1 || { echo "FAIL: reference run (see $dir/ref.log)"; exit 1; }
train "run_dir=$dir/run" >"$dir/run1.log" 2>&1 &
agent=$!
until [ -s "$dir/run/metrics.jsonl" ]; do kill -0 "$agent" 2>/dev/null || { echo "FAIL: run ended early"; exit 1; }; sleep 0.2; done
# the ranks (children of torchrun, itself the child of the backgrounded shell), as Slurm's --signal does
for pid in $(pgrep -P "$(pgrep -P "$agent")"); do kill -USR1 "$pid"; done
wait "$agent"
stopped=$(grep -c "SIGUSR1 received" "$dir/run1.log"); saved=$(cat "$dir/run/checkpoints/latest" 2>/dev/null)
echo "interrupted run: $stopped of $nproc ranks got SIGUSR1; checkpoint ${saved:-none}; $(grep -o 'stopped by SIGUSR1[^;]*' "$dir/run1.log")"
train "run_dir=$dir/run" >"$dir/run2.log" 2>&1 || { echo "FAIL: resume (see $dir/run2.log)"; exit 1; }
python - "$dir" <<'PY'
import json, sys
d = sys.argv[1]
rows = lambda p: [json.loads(x) for x in open(p) if x.strip()]
ref, got = rows(f"{d}/ref/metrics.jsonl"), rows(f"{d}/run/metrics.jsonl")
assert [r["step"] for r in got] == list(range(6)), [r["step"] for r in got]
worst = max(abs(g[k] - r[k]) for g, r in zip(got, ref) for k in ("reward/mean", "policy/loss", "memory/loss"))
print(f"resumed run vs uninterrupted: 6/6 steps, max |diff| of reward/policy loss/memory loss = {worst:.3g}")
print("PASS" if worst < 1e-3 else "FAIL: the resumed run diverged")
PY
