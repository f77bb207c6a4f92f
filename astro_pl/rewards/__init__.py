"""Rewards: final-answer extraction and math equivalence (`math.py`), RL reward functions (`functions.py`) and step
rewards on the tokens of one step (`steps.py`)."""

from astro_pl.rewards.functions import (
    OverlongPenalty,
    RewardFn,
    TaskCorrectness,
    VerdictPenalty,
    combine_rewards,
    reward_name,
)
from astro_pl.rewards.math import answers_match, extract_final_answer, math_reward, warm_up
from astro_pl.rewards.steps import StepFaultPenalty, StepRewardFn

__all__ = ["OverlongPenalty", "RewardFn", "StepFaultPenalty", "StepRewardFn", "TaskCorrectness", "VerdictPenalty",
           "answers_match", "combine_rewards", "extract_final_answer", "math_reward", "reward_name", "warm_up"]
