"""derive_seed: independent, reproducible streams from one run seed."""

from astro_pl.seeds import derive_seed


def test_same_parts_same_seed_and_any_part_changes_it():
    base = derive_seed(0, "rollout", 3, 1, 0)
    assert base == derive_seed(0, "rollout", 3, 1, 0)
    others = [derive_seed(1, "rollout", 3, 1, 0), derive_seed(0, "rollout", 3, 0, 1), derive_seed(0, "order", 3, 1, 0),
              derive_seed(0, "rollout", 31, 0)]
    assert base not in others and len(set(others)) == len(others)
    assert all(0 <= s < 2**31 for s in [base, *others])
