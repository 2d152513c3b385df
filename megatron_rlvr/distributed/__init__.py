"""Process groups and parallel layouts: the policy and the memory model each get their own TP/PP/DP layout
(`parallel`), and `cpu_compat` redirects Megatron-Core's CUDA-only calls on machines without a GPU."""
