"""Static look at the fused DLC sampler's stage-1 kernel without a GPU: registers, occupancy and SASS counts.

    python tools/kernel_sass.py [--batches 64,256,1024] [--sms 132] [--variants lean,plain]

For each batch, the launch rule's plan on a device with ``--sms`` SMs (bf16 logits at V = 151936, scalar lambda and
T, per-row seeds, no mask: the engines' call) is compiled for sm_90 with the installed Triton and its bundled ptxas,
with the integer specialisation the real call gets (strides, V and offsets divisible by 16), and disassembled with
its bundled cuobjdump. Printed per variant: registers per thread, the programs per SM those allow, the grid's
programs per SM, instructions of the streaming loop's body and what follows it (barriers, shuffles, global loads):
the serial tail a program runs after its last tile. A Triton other than the device's may schedule differently;
pass ``PYTHONPATH=<unpacked triton wheel>`` to use the device's version (the GPU image runs triton 3.6).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_PTRS = {"pol_ptr": "*bf16", "mem_ptr": "*bf16", "noise_ptr": "*bf16", "lam_ptr": "*fp32", "temp_ptr": "*fp32",
         "seed_ptr": "*i64", "off_ptr": "*i64", "pthr_ptr": "*fp32", "sthr_ptr": "*fp32", "part_f_ptr": "*fp32",
         "part_i_ptr": "*i32", "cnt_ptr": "*i32", "chunk_ptr": "*fp32", "tok_ptr": "*i64", "lp_cal_ptr": "*fp32",
         "lp_pol_ptr": "*fp32", "ent_ptr": "*fp32"}
_FLOATS = {"lam_val", "temp_val"}
_INSTR = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)")
_BRANCH = re.compile(r"\s+/\*([0-9a-f]{4,})\*/.*BRA (0x[0-9a-f]+)")


def compile_sass(constexprs: dict, num_warps: int, divisible: set) -> tuple[int, str]:
    """(registers per thread, SASS text) of dlc_stage1_kernel compiled for sm_90."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from megatron_rlvr.kernels import dlc_sample_kernel as k

    fn = k.dlc_stage1_kernel
    names = fn.arg_names
    sig = {n: "constexpr" if n in constexprs else _PTRS.get(n, "fp32" if n in _FLOATS else "i32") for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if n in _PTRS or n in divisible}
    src = ASTSource(fn, sig, {(names.index(n),): v for n, v in constexprs.items()}, attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([str(tools / "cuobjdump"), "--dump-resource-usage", str(cubin)], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([str(tools / "cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
    return int(re.search(r"REG:(\d+)", usage).group(1)), sass


def sass_counts(sass: str) -> dict:
    """Instructions of the longest loop (the streaming loop) and op counts after it."""
    lines = [line for line in sass.splitlines() if _INSTR.match(line)]
    loop = (0, -1)
    for line in lines:
        m = _BRANCH.match(line)
        if m and int(m.group(2), 16) < int(m.group(1), 16):
            span = (int(m.group(2), 16), int(m.group(1), 16))
            loop = max(loop, span, key=lambda s: s[1] - s[0])
    body, tail = collections.Counter(), collections.Counter()
    for line in lines:
        m = _INSTR.match(line)
        addr, op = int(m.group(1), 16), m.group(2).split(".")[0]
        if loop[0] <= addr <= loop[1]:
            body[op] += 1
        elif addr > loop[1]:
            tail[op] += 1
    return dict(loop=sum(body.values()), loop_bar=body["BAR"], tail=sum(tail.values()), tail_bar=tail["BAR"],
                tail_shfl=tail["SHFL"], tail_ldg=tail["LDG"], loop_mufu=body["MUFU"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="64,256,1024")
    parser.add_argument("--sms", type=int, default=132, help="SMs of the device the plan is made for (H100/H200: 132)")
    parser.add_argument("--variants", default="lean,plain")
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--no-entropy", action="store_true",
                        help="compile without the entropy output (tools/bench_kernels.py's call) instead of with it "
                             "(the engines' call)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns otherwise; the device's 3.6 fuses
    import triton

    from megatron_rlvr.kernels import dlc_sample_kernel as k
    from megatron_rlvr.kernels import dlc_sample_launcher as launcher
    from megatron_rlvr.kernels.dlc_launch_rule import launch_plan

    print(f"triton {triton.__version__}; sm_90; V = {args.vocab} bf16; entropy {'off' if args.no_entropy else 'on'}; "
          f"plans for {args.sms} SMs; rule {launcher._settings()}")
    print(f"{'B':>5} {'variant':>7} {'splits':>6} {'tile':>4} {'warps':>5} {'regs':>4} {'progs/SM ok':>11} "
          f"{'grid/SM':>7} {'loop instr':>10} {'loop BAR':>8} {'tail instr':>10} {'tail BAR':>8} {'tail SHFL':>9} "
          f"{'tail LDG':>8}")
    for rows in (int(b) for b in args.batches.split(",") if b):
        plan = launch_plan(rows, args.vocab, 0, args.sms, *launcher._settings())
        finalize = plan.splits == 1
        ints = dict(stride_pol=args.vocab, stride_mem=args.vocab, stride_noise=args.vocab, V=args.vocab,
                    vocab_offset=0, chunk_lo=plan.chunk_lo, chunk_hi=plan.chunk_hi,
                    chunks_per_split=plan.per_split, n_iter=-(-plan.per_split // plan.tile))
        divisible = {n for n, v in ints.items() if v % 16 == 0}
        for variant in (v for v in args.variants.split(",") if v):
            constexprs = dict(HAS_MEMORY=True, LAM_T=False, TEMP_T=False, SEED_T=True, OFF_T=False, HAS_MASK=False,
                              HAS_NOISE=False, RETURN_ENTROPY=not args.no_entropy, FINALIZE=finalize, COUNTER=not finalize,
                              BLOCK_S=launcher._next_pow2(plan.splits), C=plan.tile, N_ROUNDS=k.PHILOX_ROUNDS,
                              LEAN=variant == "lean",
                              RACE_BLOCK=max(32 * plan.tile, launcher._next_pow2(plan.per_split))
                              if variant == "lean" else 32 * plan.tile)
            regs, sass = compile_sass(constexprs, plan.num_warps, divisible)
            # Hopper: 64K registers and 64 warps per SM, registers allocated per warp in multiples of 8 per thread.
            fit = min(65536 // (-(-regs // 8) * 8 * 32 * plan.num_warps), 64 // plan.num_warps)
            c = sass_counts(sass)
            print(f"{rows:>5} {variant:>7} {plan.splits:>6} {plan.tile:>4} {plan.num_warps:>5} {regs:>4} {fit:>11} "
                  f"{rows * plan.splits / args.sms:>7.2f} {c['loop']:>10} {c['loop_bar']:>8} {c['tail']:>10} "
                  f"{c['tail_bar']:>8} {c['tail_shfl']:>9} {c['tail_ldg']:>8}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
