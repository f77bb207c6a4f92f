"""Fixtures of the RL end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def rl_policy_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny Llama after a few seconds of SFT on "Evaluate a + b." -> "\\boxed{a+b}": it boxes a number, right
    only sometimes, so RL groups have mixed rewards and nonzero advantages (a random model never earns +1)."""
    from rl_helpers import train_boxed_policy

    return train_boxed_policy(tiny_model_dir, tmp_path_factory.mktemp("rl_policy"))
