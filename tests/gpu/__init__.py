"""GPU-only tests (marker `gpu`), skipped without CUDA."""
