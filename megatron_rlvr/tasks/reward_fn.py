"""Reward stage: a user's own reward function, `task.math.reward_fn=module:function`.

The contract (checked when the task is built, and on every returned value):

    def my_reward(row: dict, response: str) -> float | tuple[float, dict[str, float]]

`row` is the dataset row as read from the file (every field, nested ones included), `response` the decoded
response text (up to EOS, special tokens removed). Return the reward, or the reward and extra per-response metrics;
the trainer logs each extra metric's mean over a step as ``reward_fn/<name>``. A reward above 0.5 counts as a
correct response (AVG@k, PASS@k). The function runs in the verifier's worker processes (it must be importable there:
a module on PYTHONPATH, not a notebook cell), under the per-call timeout `task.math.verify_timeout_s`.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

from megatron_rlvr.tasks.verify_pool import load_function

SIGNATURE = "(row: dict, response: str) -> float | (float, dict[str, float])"


def check_reward_fn(target: str) -> Callable:
    """Import `target` once and check that it can be called as fn(row, response); a one-line error otherwise."""
    try:
        fn = load_function(target)
    except (ImportError, AttributeError, ValueError, TypeError) as e:
        raise ValueError(f"config error: task.math.reward_fn={target!r}: cannot load it ({type(e).__name__}: {e}); "
                         "fix: name an importable function as module:function, with the module on PYTHONPATH") from e
    try:
        inspect.signature(fn).bind({}, "")
    except TypeError as e:
        raise ValueError(f"config error: task.math.reward_fn={target!r}: its signature {inspect.signature(fn)} cannot "
                         f"take (row, response) ({e}); fix: define it as fn{SIGNATURE}") from e
    except ValueError:  # builtins without a signature: trust them
        pass
    return fn


def normalize_reward(value: Any, target: str) -> tuple[float, dict[str, float]]:
    """(reward, extra metrics) of a returned value; TypeError naming the function and the contract otherwise."""
    extras: Any = {}
    if isinstance(value, tuple):
        if len(value) != 2:
            raise TypeError(f"task.math.reward_fn={target!r} returned a tuple of {len(value)} items; it must return "
                            f"float or (float, dict): fn{SIGNATURE}")
        value, extras = value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise TypeError(f"task.math.reward_fn={target!r} returned reward {value!r:.60} ({type(value).__name__}); it "
                        f"must be a finite float: fn{SIGNATURE}")
    if not isinstance(extras, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in extras.items()):
        raise TypeError(f"task.math.reward_fn={target!r} returned extra metrics {extras!r:.80}; they must be a "
                        f"dict[str, float]: fn{SIGNATURE}")
    return float(value), {k: float(v) for k, v in extras.items()}


def call_reward(target: str, row: dict, response: str) -> tuple[float, dict[str, float]]:
    """Run the user's function (in a verifier worker) and check what it returned."""
    return normalize_reward(load_function(target)(row, response), target)
