"""Rollout stage, SGLang servers: attach to running DLC servers over HTTP, and launch them.

    python -m sglang.launch_server $(server_args ...)     # what `server_command` spells out
    SGLangEngine(server_urls=[...])                        # the trainer attaches; prompts spread over servers

Tensor weight updates over HTTP send CUDA-IPC / shared-memory handles, so they need the server on the same host
(colocated); disaggregated servers receive weights over NCCL (`update_weights_from_distributed`).
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
from typing import Optional, Sequence

from megatron_rlvr.rollout.sglang.protocol import MODEL_PACKAGE, SAMPLER_BACKEND

HTTP_TIMEOUT_S = 3600.0


class SGLangServerError(RuntimeError):
    """An SGLang server is unreachable or answered with an error."""


def _post(url: str, path: str, payload: Optional[dict], timeout: float = HTTP_TIMEOUT_S):
    import requests

    try:
        r = requests.post(f"{url}/{path}", json=payload, timeout=timeout)
    except requests.RequestException as e:
        raise SGLangServerError(f"SGLang server {url} unreachable on /{path}: {e}; is it running?") from e
    if r.status_code != 200:
        raise SGLangServerError(f"SGLang server {url} /{path} answered {r.status_code}: {r.text[:500]}")
    try:
        return r.json()
    except ValueError:
        return r.text


def post(url: str, path: str, payload: Optional[dict]):
    """POST one control request to one server; raise SGLangServerError if it fails or reports no success."""
    res = _post(url, path, payload)
    if isinstance(res, dict) and res.get("success") is False:
        raise SGLangServerError(f"SGLang server {url} /{path} failed: {res.get('message')}")
    return res


def tp_size(url: str) -> int:
    """Tensor-parallel size of a running server (its number of weight-receiving ranks)."""
    info = _get(url, "server_info")
    return int(info.get("tp_size", 1)) if isinstance(info, dict) else 1


def check_servers(urls: Sequence[str], timeout: float = 30.0) -> None:
    """Raise SGLangServerError naming every server that does not answer /health."""
    import requests

    bad = []
    for url in urls:
        try:
            if requests.get(f"{url}/health", timeout=timeout).status_code != 200:
                bad.append(url)
        except requests.RequestException:
            bad.append(url)
    if bad:
        raise SGLangServerError(f"SGLang servers not healthy: {bad}; start them with "
                                "megatron_rlvr.rollout.sglang.remote.server_command and check rollout.server_urls")


def post_all(urls: Sequence[str], path: str, payload: Optional[dict]) -> list:
    """POST the same control request to every server (in parallel); raise on the first failure."""
    with cf.ThreadPoolExecutor(max_workers=len(urls)) as ex:
        return list(ex.map(lambda u: _post(u, path, payload), urls))


def generate(urls: Sequence[str], input_ids: list, params: list) -> list:
    """Spread requests round-robin over the servers; outputs come back in request order."""
    from megatron_rlvr.rollout.sglang.sampler import DLCRequestParams

    carrier = DLCRequestParams().to_str()
    shards = [list(range(i, len(input_ids), len(urls))) for i in range(len(urls))]

    def run(k: int):
        idx = shards[k]
        if not idx:
            return []
        body = {"input_ids": [input_ids[i] for i in idx], "sampling_params": [params[i] for i in idx],
                "custom_logit_processor": [carrier] * len(idx)}
        return _post(urls[k], "generate", body)

    outs: list = [None] * len(input_ids)
    with cf.ThreadPoolExecutor(max_workers=len(urls)) as ex:
        for k, res in enumerate(ex.map(run, range(len(urls)))):
            for i, o in zip(shards[k], res):
                outs[i] = o
    return outs


def update_weights_from_tensor(urls: Sequence[str], named_tensors: list) -> None:
    """Same-host servers: hand tensors over by IPC handle (one serialized copy per tensor-parallel rank)."""
    from sglang.srt.utils.common import MultiprocessingSerializer

    for url in urls:
        tp = tp_size(url)
        payload = MultiprocessingSerializer.serialize(named_tensors, output_str=True)
        res = _post(url, "update_weights_from_tensor",
                    {"serialized_named_tensors": [payload] * tp, "flush_cache": False})
        if isinstance(res, dict) and not res.get("success", True):
            raise SGLangServerError(f"SGLang server {url} rejected the weight update: {res.get('message')}")


def _get(url: str, path: str):
    import requests

    try:
        return requests.get(f"{url}/{path}", timeout=60).json()
    except (requests.RequestException, ValueError) as e:
        raise SGLangServerError(f"SGLang server {url} /{path} failed: {e}") from e


def server_env(device: str = "cuda") -> dict:
    """Environment a DLC server needs: the model package, and SGLang's CPU switch for device="cpu"."""
    env = {"SGLANG_EXTERNAL_MODEL_PACKAGE": MODEL_PACKAGE}
    if device == "cpu":
        env["SGLANG_USE_CPU_ENGINE"] = "1"  # without it SGLang's rotary embedding imports vllm
    return env


def server_command(model_path: str, port: int, host: str = "127.0.0.1", device: str = "cuda",
                   extra: Sequence[str] = ()) -> list[str]:
    """argv of `python -m sglang.launch_server` serving the DLC model (run it with `server_env()` added)."""
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model_path), "--host", host,
           "--port", str(port), "--skip-tokenizer-init", "--enable-custom-logit-processor", "--device", device]
    if device == "cpu":
        cmd += ["--attention-backend", "torch_native", "--disable-cuda-graph", "--dtype", "float32",
                "--max-total-tokens", "16384"]
    else:
        cmd += ["--sampling-backend", SAMPLER_BACKEND]
    return cmd + list(extra)


def trainer_weight_sync_group(master_address: str, master_port: int, world_size: int,
                              group_name: str = "dlc_weight_sync", backend: str = "nccl", timeout_s: float = 600.0):
    """Trainer side (rank 0) of the weight-sync group the servers join (`SGLangEngine.connect_weight_sync`).

    Call it while the servers' `init_weights_update_group` requests are in flight (the rendezvous waits for all ranks).
    """
    from datetime import timedelta

    from sglang.srt.utils.common import init_custom_process_group

    return init_custom_process_group(backend=backend, init_method=f"tcp://{master_address}:{master_port}",
                                     world_size=world_size, rank=0, group_name=group_name,
                                     timeout=timedelta(seconds=timeout_s))


__all__ = ["SGLangServerError", "check_servers", "generate", "post", "post_all", "server_command", "server_env",
           "tp_size", "trainer_weight_sync_group", "update_weights_from_tensor"]

