"""SGLang rollout-engine tests (SGLang venv only)."""
