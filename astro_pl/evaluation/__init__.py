"""Evaluation: benchmark runs (`astro eval`), metrics usable from RL validation, reports and the backtrack analysis."""
