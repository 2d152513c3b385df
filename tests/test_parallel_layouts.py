"""Parallel layouts: policy and memory model get their own Megatron process groups in one world."""

from megatron_rlvr.config import ParallelConfig
from tests.helpers.dist import run_distributed


def _layout_facts() -> dict:
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_rlvr.distributed.parallel import init_distributed

    ctx = init_distributed({"policy": ParallelConfig(tp=2), "memory": ParallelConfig(tp=1)})

    def facts():
        t = torch.ones(1)
        dist.all_reduce(t, group=ps.get_tensor_model_parallel_group())
        return (ps.get_tensor_model_parallel_world_size(), ps.get_data_parallel_world_size(),
                ps.get_data_parallel_rank(), t.item())

    out = {"default": (ctx.active, facts())}
    with ctx.layout("memory") as lay:
        out["memory"] = (lay.tp, lay.dp, facts())
        with ctx.layout("policy"):
            out["nested_policy"] = facts()
        out["memory_again"] = facts()
    out["after"] = (ctx.active, facts())
    ctx.destroy()
    out["destroyed"] = ps.model_parallel_is_initialized()
    return out


def test_each_layout_sees_its_own_tensor_and_data_parallel_groups():
    r0, r1 = run_distributed(_layout_facts, world_size=2, timeout=120)
    # policy: TP=2 x DP=1; memory: TP=1 x DP=2 (data-parallel rank = global rank)
    assert r0["default"] == ("policy", (2, 1, 0, 2.0)) == r1["default"]
    assert r0["memory"] == (1, 2, (1, 2, 0, 1.0)) and r1["memory"] == (1, 2, (1, 2, 1, 1.0))
    assert r0["nested_policy"] == (2, 1, 0, 2.0) and r0["memory_again"] == (1, 2, 0, 1.0)
    assert r1["after"] == ("policy", (2, 1, 0, 2.0))
    assert r0["destroyed"] is False
