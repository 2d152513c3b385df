"""Data stage: what the model sees. `describe(task)` is the report of `megatron-rlvr data inspect` (rows loaded and
skipped with the first reasons, the first row's gold answer, the first prompt as rendered); `write_first_prompt`
puts the rendered first prompt of a run into its folder (`first_prompt.txt`)."""

from __future__ import annotations

from pathlib import Path

MAX_REASONS = 3


def first_prompt_text(task) -> str:
    ex = task.prompts[0]
    return ex.prompt


def describe(task) -> str:
    """A few lines: source and layout, rows loaded / skipped, gold answer of the first row, first rendered prompt."""
    ex = task.prompts[0]
    lines = []
    if task.name == "math":
        pk, ak = task.keys
        lines.append(f"dataset: {task.paths} (prompt field {pk!r}, answer field {ak!r})")
        lines.append(f"rows loaded: {len(task.prompts)}   skipped: {task.num_skipped}")
        for reason in task.skipped[:MAX_REASONS]:
            lines.append(f"  skipped: {reason}")
        if task.num_skipped > MAX_REASONS:
            lines.append(f"  ... and {task.num_skipped - MAX_REASONS} more")
        lines.append(f"gold answer of the first row ({ex.metadata['source']}:{ex.metadata['line']}): "
                     f"{ex.metadata['answer']}")
        lines.append(f"prompt rendering: {task.renderer.mode}")
        if task.reward_fn:
            lines.append(f"reward: {task.reward_fn}")
    else:
        lines.append(f"task: {task.name} ({len(task.prompts)} prompts)")
        answers = ex.metadata.get("answers")
        if answers:
            lines.append(f"gold answers of the first prompt: {', '.join(answers)}")
    lines.append(f"first rendered prompt ({len(ex.prompt_ids)} tokens), between the rulers:")
    lines.append("-" * 72)
    lines.append(first_prompt_text(task))
    lines.append("-" * 72)
    return "\n".join(lines)


def write_first_prompt(task, run_dir: Path) -> Path:
    """`run_dir/first_prompt.txt`: the first prompt exactly as the policy is conditioned on it."""
    path = Path(run_dir) / "first_prompt.txt"
    path.write_text(first_prompt_text(task))
    return path
