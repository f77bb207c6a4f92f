"""The sections of `bench/gpu_check.py`, one module each; `common` holds what they share."""
