"""A dedicated rollout server started by `python -m megatron_rlvr.rollout.server`, attached to by URL: weights
arrive over the weight-sync process group (gloo here, NCCL on GPUs), and the server then decodes exactly like the
transformers reference of pi_cal holding the same weights. (The session's shared in-process `engine` is not used:
test_engine_failures kills it.)"""

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


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    import requests

    tmp = tmp_path_factory.mktemp("rollout_server")
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
    yield url
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
    log.close()


def test_weights_pushed_over_the_sync_group_make_the_server_decode_like_the_reference(server_url, shapes,
                                                                                      hf_models):
    from megatron_rlvr.rollout.sglang import SGLangEngine

    policy_shape, memory_shape = shapes
    remote = SGLangEngine(server_urls=[server_url], policy_shape=policy_shape, memory_shape=memory_shape,
                          placement="dedicated", weight_bucket_mb=1)
    remote.connect_weight_sync(master_address="127.0.0.1")
    for name in ("policy", "memory"):
        remote.update_weights(name, list(hf_models[name].state_dict().items()))
    prompts = [[5, 17, 3, 99], [1, 2, 3], [42] * 7]
    gens = remote.generate(prompts, SamplingParams(max_new_tokens=10, temperature=0.0, lam=0.7))
    for prompt, g in zip(prompts, gens):
        toks, lp_cal, lp_pol, _ = greedy_dlc(hf_models["policy"], hf_models["memory"], prompt, 0.7, 10)
        assert g.response_ids == toks
        assert g.logprob_cal == pytest.approx(lp_cal, abs=1e-5)
        assert g.logprob_policy == pytest.approx(lp_pol, abs=1e-5)


def test_trainer_attached_to_a_dedicated_server_trains_and_its_weights_reach_the_server(server_url, tmp_path):
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "megatron_rlvr.cli", "train", f"run_dir={run_dir}", "rollout.engine=sglang",
           "rollout.placement=dedicated", f"rollout.server_urls=[{server_url}]", "steps=2",
           "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=8",
           f"warm_start.cache_dir={tmp_path / 'ws'}", "warm_start.steps=40", "warm_start.gate=false", "logging.progress=false",
           "logging.tensorboard=false", "eval.interval=0", "checkpoint.export_hf=false"]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1")
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=1200, env=env)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    # The server's log-probs of the sampled tokens equal Megatron's: the broadcast weights arrived intact.
    assert rows[0]["rollout/logprob_abs_diff"] < 1e-4 and rows[1]["rollout/logprob_abs_diff"] < 1e-4
    assert rows[1]["sync/bytes"] > 0
