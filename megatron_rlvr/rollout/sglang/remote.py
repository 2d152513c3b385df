"""Rollout stage, SGLang servers: attach to running DLC servers over HTTP, and launch them.

    python -m sglang.launch_server $(server_args ...)     # what `server_command` spells out
    SGLangEngine(server_urls=[...])                        # the trainer attaches; prompts spread by load

Tensor weight updates over HTTP send CUDA-IPC / shared-memory handles, so they need the server on the same host
(colocated); disaggregated servers receive weights over NCCL (`update_weights_from_distributed`). Both are driven
by `megatron_rlvr.weight_sync`; this module only speaks HTTP.
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
from typing import Optional, Sequence

from megatron_rlvr.rollout.engine import RolloutEngineError
from megatron_rlvr.rollout.sglang.protocol import MODEL_PACKAGE, SAMPLER_BACKEND

HTTP_TIMEOUT_S = 3600.0


class SGLangServerError(RolloutEngineError):
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
    """Tensor-parallel size of a running server."""
    info = _get(url, "server_info")
    return int(info.get("tp_size", 1)) if isinstance(info, dict) else 1


def weight_ranks(url: str) -> int:
    """Ranks a server brings to a weight-sync group (`init_weights_update_group`).

    SGLang places a receiving process at `rank_offset + tp_rank`, ignoring its data- and pipeline-parallel rank,
    so a server with dp_size or pp_size > 1 would put two processes on one rank and hang the rendezvous: refused
    here with the fix (one server per replica scales the same way and keeps the group exact).
    """
    info = _get(url, "server_info")
    info = info if isinstance(info, dict) else {}
    dp, pp = int(info.get("dp_size", 1) or 1), int(info.get("pp_size", 1) or 1)
    if dp > 1 or pp > 1:
        raise SGLangServerError(
            f"SGLang server {url} runs dp_size={dp} pp_size={pp}: SGLang ranks weight receivers by tp_rank only, so "
            "its replicas cannot join one weight-sync group; fix: start one server per replica (tp_size GPUs each) "
            "and list every URL in rollout.server_urls")
    return int(info.get("tp_size", 1) or 1)


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


def post_each(urls: Sequence[str], path: str, payloads: Sequence[Optional[dict]]) -> list:
    """POST payloads[k] to urls[k], all in parallel (e.g. a rendezvous every server must join at once)."""
    with cf.ThreadPoolExecutor(max_workers=len(urls)) as ex:
        return list(ex.map(lambda k: post(urls[k], path, payloads[k]), range(len(urls))))


def chunks_by_load(n_requests: int, n_servers: int, unit: int = 1, per_server: int = 4) -> list[range]:
    """Request ranges a pull queue hands out: about `per_server` chunks per server, each a multiple of `unit`
    requests (a group of G responses never splits, so a server's prefix cache serves the whole group)."""
    units = -(-n_requests // unit)
    size = max(1, -(-units // (n_servers * per_server))) * unit
    return [range(a, min(a + size, n_requests)) for a in range(0, n_requests, size)]


def generate(urls: Sequence[str], input_ids: list, params: list, unit: int = 1) -> list:
    """Spread requests over the servers by load: each server pulls the next chunk when it finishes its last, so
    a faster (or less loaded) server takes more of the step. Outputs come back in request order; which server
    ran a request does not change its result (its seed travels in its own sampling params)."""
    import queue

    from megatron_rlvr.rollout.sglang.sampler import DLCRequestParams

    carrier = DLCRequestParams().to_str()
    todo: "queue.SimpleQueue[range]" = queue.SimpleQueue()
    for c in chunks_by_load(len(input_ids), len(urls), unit):
        todo.put(c)
    outs: list = [None] * len(input_ids)

    def worker(k: int) -> int:
        served = 0
        while True:
            try:
                idx = todo.get_nowait()
            except queue.Empty:
                return served
            body = {"input_ids": [input_ids[i] for i in idx], "sampling_params": [params[i] for i in idx],
                    "custom_logit_processor": [carrier] * len(idx)}
            for i, o in zip(idx, _post(urls[k], "generate", body)):
                outs[i] = o
            served += len(idx)

    with cf.ThreadPoolExecutor(max_workers=len(urls)) as ex:
        list(ex.map(worker, range(len(urls))))  # re-raises a server's error here
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


__all__ = ["SGLangServerError", "check_servers", "chunks_by_load", "generate", "post", "post_all", "post_each",
           "server_command", "server_env", "tp_size", "update_weights_from_tensor", "weight_ranks"]

