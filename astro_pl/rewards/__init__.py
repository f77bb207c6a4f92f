"""Rewards: final-answer extraction and math equivalence (`math.py`), and RL reward functions (`functions.py`)."""

from astro_pl.rewards.functions import (
    OverlongPenalty,
    RewardFn,
    TaskCorrectness,
    VerdictPenalty,
    combine_rewards,
    reward_name,
)
from astro_pl.rewards.math import answers_match, extract_final_answer, math_reward, warm_up

__all__ = ["OverlongPenalty", "RewardFn", "TaskCorrectness", "VerdictPenalty", "answers_match", "combine_rewards",
           "extract_final_answer", "math_reward", "reward_name", "warm_up"]
