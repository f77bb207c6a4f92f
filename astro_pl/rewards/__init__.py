"""Rewards: final-answer extraction and math answer equivalence (`math.py`)."""

from astro_pl.rewards.math import answers_match, extract_final_answer, math_reward, warm_up

__all__ = ["answers_match", "extract_final_answer", "math_reward", "warm_up"]
