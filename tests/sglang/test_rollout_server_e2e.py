"""Two dedicated rollout servers started by `python -m megatron_rlvr.rollout.server`, attached to by URL: weights
arrive over one weight-sync process group spanning the trainer and every server rank (gloo here, NCCL on GPUs),
prompts are spread over both by load, and every response is exactly the transformers reference of pi_cal holding
the same weights. (The session's shared in-process `engine` is not used: test_engine_failures kills it.)"""

import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

from megatron_rlvr.rollout.types import SamplingParams

from .conftest import MEMORY_PRESET, POLICY_PRESET
from .reference import greedy_dlc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(tmp):
    import requests

    cfg = tmp / "run.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp / "run"), "policy": {"preset": POLICY_PRESET},
                                   "memory": {"preset": MEMORY_PRESET},
                                   "rollout": {"engine": "sglang", "placement": "dedicated",
                                               "sglang": {"random_seed": 0, "log_level": "warning"}}}))
    port = _free_port()
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "megatron_rlvr.rollout.server", str(cfg), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        try:
            if requests.get(f"{url}/health", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"rollout server did not come up; log:\n{(tmp / 'server.log').read_text()[-3000:]}")
        time.sleep(2)
    return url, proc, log


@pytest.fixture(scope="module")
def server_urls(tmp_path_factory):
    servers = []
    try:
        for k in range(2):  # one after the other: each CPU server takes about a minute and a few GB to start
            servers.append(_start_server(tmp_path_factory.mktemp(f"rollout_server_{k}")))
        yield [url for url, _, _ in servers]
    finally:
        for _, proc, log in servers:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
            log.close()


def test_broadcast_over_one_group_reaches_both_servers_and_both_decode_like_the_reference(server_urls, shapes,
                                                                                           hf_models):
    from megatron_rlvr.rollout.sglang import SGLangEngine
    from megatron_rlvr.weight_sync import Broadcast, build_transport

    policy_shape, memory_shape = shapes
    remote = SGLangEngine(server_urls=server_urls, policy_shape=policy_shape, memory_shape=memory_shape,
                          placement="dedicated")
    transport = build_transport(remote, shapes={"policy": policy_shape, "memory": memory_shape}, bucket_mb=1)
    assert isinstance(transport, Broadcast)
    assert transport.world_size == 1 + 2  # the trainer and each server's one (tp_size 1) rank
    try:
        for name in ("policy", "memory"):
            assert transport.push(name, list(hf_models[name].state_dict().items())) > 0
        # 12 requests in groups of 3: four groups, pulled by the two servers as each finishes its last chunk
        prompts = [p for p in ([5, 17, 3, 99], [1, 2, 3], [42] * 7, [8, 9]) for _ in range(3)]
        gens = remote.generate(prompts, SamplingParams(max_new_tokens=10, temperature=0.0, lam=0.7))
        # Sharding never changes the result: sampled (T = 1) responses from both servers, spread by load, are
        # those of either server alone (per-request seeds; the position in the response is the RNG offset).
        sampled = SamplingParams(max_new_tokens=10, temperature=1.0, lam=0.7, seed=123)
        both = remote.generate(prompts, sampled)
        for url in server_urls:
            alone = SGLangEngine(server_urls=[url], policy_shape=policy_shape, memory_shape=memory_shape,
                                 placement="dedicated").generate(prompts, sampled)
            assert [g.response_ids for g in alone] == [g.response_ids for g in both]
            for a, b in zip(alone, both):
                assert a.logprob_cal == pytest.approx(b.logprob_cal, abs=1e-5)
    finally:
        transport.close()
    for prompt, g in zip(prompts, gens):
        toks, lp_cal, lp_pol, _ = greedy_dlc(hf_models["policy"], hf_models["memory"], prompt, 0.7, 10)
        assert g.response_ids == toks
        assert g.logprob_cal == pytest.approx(lp_cal, abs=1e-5)
        assert g.logprob_policy == pytest.approx(lp_pol, abs=1e-5)


def test_trainer_attached_to_two_dedicated_servers_trains_and_its_weights_reach_both(server_urls, tmp_path):
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "megatron_rlvr.cli", "train", f"run_dir={run_dir}", "rollout.engine=sglang",
           "rollout.placement=dedicated", f"rollout.server_urls=[{','.join(server_urls)}]", "steps=2",
           "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=8",
           f"warm_start.cache_dir={tmp_path / 'ws'}", "warm_start.steps=40", "warm_start.gate=false", "logging.progress=false",
           "logging.tensorboard=false", "eval.interval=0", "checkpoint.export_hf=false"]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1")
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=1200, env=env)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    # Both servers' log-probs of the sampled tokens equal Megatron's: the broadcast weights arrived intact.
    assert rows[0]["rollout/logprob_abs_diff"] < 1e-4 and rows[1]["rollout/logprob_abs_diff"] < 1e-4
    assert rows[1]["sync/bytes"] > 0
