"""Kernel micro-benchmarks as a script: ``python tools/bench_kernels.py [--batches 1,32,256,1024] [--out-dir DIR]``.

The same as ``megatron-rlvr bench kernels``; the code lives in ``megatron_rlvr.kernels.bench`` so that an
installed package has it too. Prints the table, writes bench_kernels.csv and bench_kernels.png, and ends with
one JSON line.
"""

import sys

from megatron_rlvr.kernels.bench import main

if __name__ == "__main__":
    sys.exit(main())
