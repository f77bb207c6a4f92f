"""PromptDataModule: rank sharding, resumable order, rendering, and the RL configs parse."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from astro_pl.datamodules.prompts import PromptDataModule, PromptSampler
from astro_pl.tasks import ArithmeticTask

REPO = Path(__file__).resolve().parents[2]


def test_sampler_ranks_take_disjoint_slices_and_reshuffle_each_epoch():
    ranks = [PromptSampler(8, seed=3, rank=r, world_size=2) for r in range(2)]
    epoch0 = [ranks[0].draw(2), ranks[1].draw(2), ranks[0].draw(2), ranks[1].draw(2)]
    flat = [i for draw in epoch0 for i in draw]
    assert sorted(flat) == list(range(8))  # one epoch: every problem once across both ranks
    assert ranks[0].position == ranks[1].position == 8
    epoch1 = [i for _ in range(2) for r in ranks for i in r.draw(2)]
    assert sorted(epoch1) == list(range(8)) and epoch1 != flat


def test_sampler_resumes_from_its_position():
    a = PromptSampler(10, seed=1)
    draws = [a.draw(3) for _ in range(5)]
    b = PromptSampler(10, seed=1)
    b.position = 6
    assert [b.draw(3) for _ in range(3)] == draws[2:]


def test_datamodule_draws_the_tasks_problems_and_restores_state():
    task = ArithmeticTask(num_train=20, num_val=5)
    dm = PromptDataModule(task, batch_size=3)
    dm.setup("fit")
    batches = iter(dm.train_dataloader())
    first, second = next(batches), next(batches)
    assert len(first) == 3 and all(p in task.problems("train")["synthetic"] for p in first + second)
    # the held-out set is the task's validation split, generated with its own seed
    assert len(dm.val_items) == 5 and all(p.id.startswith("synthetic-1000003-") for p in dm.val_items)
    state = dm.state_dict()
    assert state == {"position": 6}
    resumed = PromptDataModule(ArithmeticTask(num_train=20, num_val=5), batch_size=3)
    resumed.load_state_dict({"position": 3})
    resumed.setup("fit")
    assert next(iter(resumed.train_dataloader())) == second


def test_train_skip_leaves_out_the_problems_sft_used():
    task = ArithmeticTask(num_train=20, num_val=0)
    dm = PromptDataModule(task, batch_size=4, train_skip=15, train_limit=3)
    dm.setup("fit")
    assert dm.train_items == task.problems("train")["synthetic"][15:18]
    drawn = {p.id for p in next(iter(dm.train_dataloader()))}
    assert drawn <= {p.id for p in dm.train_items}
    with pytest.raises(ValueError, match="no problem after --data.train_skip 20"):
        PromptDataModule(task, train_skip=20).setup("fit")
    with pytest.raises(ValueError, match="--data.train_skip must be >= 0"):
        PromptDataModule(task, train_skip=-1)


def test_bad_batch_size_names_the_flag():
    with pytest.raises(ValueError, match="--data.batch_size"):
        PromptDataModule(ArithmeticTask(), batch_size=0)


@pytest.mark.parametrize("name", ["synthetic.yaml", "llama3_8b.yaml", "llama31_70b.yaml"])
def test_rl_configs_parse(name):
    from jsonargparse import ArgumentParser

    from astro_pl.modules.rl import RLModule

    path = REPO / "configs" / "rl" / name
    config = yaml.safe_load(path.read_text())
    parser = ArgumentParser()
    parser.add_argument("--seed_everything", type=int)
    parser.add_argument("--trainer", type=dict)
    parser.add_subclass_arguments(RLModule, "model")
    parser.add_subclass_arguments(PromptDataModule, "data")
    init = parser.instantiate(parser.parse_path(str(path)))  # the task file resolves beside the config
    assert init.model.grpo.group_size == config["model"]["init_args"]["grpo"]["group_size"]
    assert init.model.sampling.n == init.model.grpo.group_size
