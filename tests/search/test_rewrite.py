"""The LLM rewrite of traces (procedure cloning, case 1): prompts and acceptance rules on hand inputs, the batched
pass with a scripted rewriter, crash safety of rewritten.jsonl, and the tiny Llama through the real engines."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from hand_trees import sample_tree
from scripted_engine import ScriptedEngine

from astro_pl.evaluation.backtracks import count_backtracks, count_reflections
from astro_pl.loading import load_tokenizer
from astro_pl.rewards.math import extract_final_answer
from astro_pl.rollout.base import Completion
from astro_pl.runfiles import read_jsonl
from astro_pl.search.linearize import TraceArgs, build_traces, trace_segments
from astro_pl.search.rewrite import (
    REWRITTEN_FILE,
    RewriteArgs,
    TraceRewriter,
    accept_go_back,
    accept_step,
    context,
    rewrite_folder,
    rewrite_requests,
)
from astro_pl.search.run import main as search_main
from astro_pl.search.verbalize import Phrases, Segment

REPO = Path(__file__).resolve().parents[2]
BANNED = ["But wait", "Let's go back to where we", "Let's restart"]
STEM = "Let's go back to where we"


def done(text: str, reason: str = "stop") -> Completion:
    return Completion(text, [1], [], reason)


def test_requests_cover_steps_and_backtracks_only():
    tree = sample_tree()
    segments = trace_segments(tree, [8, 6, 3], TraceArgs(), "search")
    kinds = [s.kind for s in segments]
    assert kinds == ["step", "step", "restart", "step", "check", "step", "step", "backtrack", "step", "check",
                     "conclusion"]
    requests = rewrite_requests(tree.problem, segments, {n.id: n.text for n in tree.nodes}, 3000)
    assert [i for i, _ in requests] == [0, 1, 3, 5, 6, 7, 8]
    first, go_back = requests[0][1], requests[5][1]
    assert "Solution so far:\n(nothing yet)" in first and first.endswith("Next step:\nCompute 2 + 3 = 5.")
    assert go_back.endswith("Step to go back to:\nCompute 3 * 4 = 12.")
    assert "So \\boxed{13}" in go_back.split("Step to go back to:")[0]  # the failed attempt is in the context


def test_context_keeps_the_end_at_a_paragraph_start():
    segments = [Segment("a" * 10, "step"), Segment("b" * 10, "step"), Segment("c" * 10, "step")]
    assert context(segments, 100) == "a" * 10 + "\n\n" + "b" * 10 + "\n\n" + "c" * 10
    assert context(segments, 15) == "...\n\n" + "c" * 10  # the tail "bbb\n\ncccccccccc" cut at its paragraph start
    assert context([], 10) == ""


@pytest.mark.parametrize("reply,reason,expected", [
    ("I now compute 3 * 4 = 12.", "stop", "I now compute 3 * 4 = 12."),
    ("  I compute\n\n3 * 4 = 12.  ", "stop", "I compute\n3 * 4 = 12."),  # one paragraph
    ("I now compute 3 * 4 = 12 and then", "length", None),  # cut off
    ("   ", "stop", None),  # empty
    ("I compute 3 * 4 = 13.", "stop", None),  # a number of the original is gone
    ("I compute 3 * 4 = 12. But wait, is it?", "stop", None),  # a reflection of its own
    ("I compute 3 * 4 = 12, so \\boxed{12}", "stop", None),  # an answer the step did not give
])
def test_accept_step(reply, reason, expected):
    assert accept_step("Compute 3 * 4 = 12.", done(reply, reason), BANNED) == expected


def test_accept_step_keeps_the_final_answer_up_to_equivalence():
    original = "Then 1 / 2 = 0.5, so \\boxed{\\frac{1}{2}}"
    assert accept_step(original, done("I get 1 / 2 = 0.5, so \\boxed{1/2}"), BANNED) is not None
    assert accept_step(original, done("I get 1 / 2 = 0.5, so \\boxed{2}"), BANNED) is None
    assert accept_step(original, done("I get 1 / 2 = 0.5."), BANNED) is None  # the answer is dropped


def test_accept_go_back():
    assert accept_go_back(STEM, done(" multiplied 3 by 4. Then we add.\nMore"), BANNED) == \
        "Let's go back to where we multiplied 3 by 4."
    assert accept_go_back(STEM, done(" multiplied 3 by 4 and"), BANNED) is None  # no finished sentence
    assert accept_go_back(STEM, done(" found \\boxed{12}."), BANNED) is None
    assert accept_go_back(STEM, done(" were. But wait, are we right?"), BANNED) == "Let's go back to where we were."
    assert accept_go_back(STEM, done(" x" * 150 + "."), BANNED) is None  # over 200 characters


def careful_reply(prompt: str, params) -> list[str]:
    """Rewrites like a careful LLM: a step becomes "I note: <step>", a go-back sentence names the step returned to
    (then rambles on, which the first-sentence rule cuts)."""
    if prompt.endswith(STEM):
        target = prompt.split("Step to go back to:\n")[1].split("\n")[0]
        return [f" wrote {target.split(' =')[0].lower()}.\nAnd then more."]
    return ["I note: " + prompt.split("Next step:\n")[1].split("\n")[0].rstrip("]")]


class ScriptedRewriter(ScriptedEngine):
    """`careful_reply` as an engine that dies in call number `fail_after + 1` (a killed run)."""

    def __init__(self, fail_after: int | None = None):
        super().__init__(careful_reply)
        self.fail_after = fail_after

    def generate(self, prompts, params):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("killed")
        return super().generate(prompts, params)


def test_scripted_rewrite_of_two_trees_in_one_call():
    trees = [sample_tree("a"), sample_tree("b")]
    args = TraceArgs(dedupe=False)
    batch = [(t, build_traces(t, args, random.Random(i))) for i, t in enumerate(trees)]
    engine = ScriptedRewriter()
    rewriter = TraceRewriter(engine, lambda text: f"[{text}]", RewriteArgs(go_back=STEM), args)
    out = rewriter.rewrite(batch)
    assert len(engine.calls) == 1 and engine.calls[0][1].n == 1 and engine.calls[0][1].temperature == 0.0
    assert [len(records) for records in out] == [4, 4]
    phrases = Phrases()
    for (_, originals), records in zip(batch, out, strict=True):
        for original, record in zip(originals, records, strict=True):
            text = record["trace"]
            assert record["original_trace"] == original["trace"] and record["terminal_ids"] == original["terminal_ids"]
            assert extract_final_answer(text) == extract_final_answer(original["trace"]) == "14"
            assert count_backtracks(text) == count_backtracks(original["trace"])
            assert count_reflections(text) == count_reflections(original["trace"])
            paragraphs = text.split("\n\n")
            steps = [p for p in paragraphs if not p.startswith(phrases.question) and not p.startswith("Therefore")]
            assert all(p.startswith("I note: ") for p in steps)
            assert record["rewritten_paragraphs"] == record["rewritable_paragraphs"] == \
                len(steps) + original["trace"].count("Let's go back to where we wrote")
            if 'wrote "Compute 3 * 4 = 12."' in original["trace"]:  # went back to node 1
                assert f"{phrases.question} {phrases.doubt} Let's go back to where we wrote compute 3 * 4." in text


def test_a_trace_that_does_not_rebuild_from_its_tree_is_refused():
    tree = sample_tree()
    record = build_traces(tree, TraceArgs(), random.Random(0))[0]
    rewriter = TraceRewriter(ScriptedRewriter(), str, RewriteArgs(), TraceArgs(self_check_q=None))
    with pytest.raises(ValueError, match="does not rebuild from its tree"):
        rewriter.rewrite([(tree, [record])])


def test_rewrite_folder_names_the_file_of_a_trace_that_does_not_rebuild(search_dir, tmp_path, tiny_tokenizer):
    for name in ("trees.jsonl", "traces.jsonl"):
        (tmp_path / name).write_bytes((search_dir / name).read_bytes())
    with pytest.raises(ValueError, match=f"{tmp_path / 'traces.jsonl'}: trace of problem .* does not rebuild"):
        rewrite_folder(tmp_path, RewriteArgs(), TraceArgs(self_check_q=None), ScriptedRewriter(), tiny_tokenizer)
    assert read_jsonl(tmp_path / REWRITTEN_FILE) == []


def test_rewrite_args_name_the_flag():
    with pytest.raises(ValueError, match="--rewrite.batch_trees"):
        RewriteArgs(batch_trees=0)
    with pytest.raises(ValueError, match="--rewrite.go_back"):
        RewriteArgs(go_back=" ")


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("search") / "out"
    assert search_main(["--config", str(REPO / "configs/search/synthetic.yaml"), "--out_dir", str(out),
                        "--limit", "5", "--search.iterations", "8"]) == 0
    return out


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


def test_rewrite_folder_resumes_after_a_kill(search_dir, tmp_path, tiny_tokenizer):
    traces = read_jsonl(search_dir / "traces.jsonl")
    problems = list(dict.fromkeys(t["problem_id"] for t in traces))
    assert len(problems) >= 3
    args = RewriteArgs(go_back=STEM, batch_trees=1)
    reference = tmp_path / "reference"
    reference.mkdir()
    for name in ("trees.jsonl", "traces.jsonl"):
        (reference / name).write_bytes((search_dir / name).read_bytes())
    rewrite_folder(reference, args, TraceArgs(), ScriptedRewriter(), tiny_tokenizer)
    expected = read_jsonl(reference / REWRITTEN_FILE)

    run = tmp_path / "run"
    run.mkdir()
    for name in ("trees.jsonl", "traces.jsonl"):
        (run / name).write_bytes((search_dir / name).read_bytes())
    with pytest.raises(RuntimeError, match="killed"):  # dies in its third engine call: two trees written
        rewrite_folder(run, args, TraceArgs(), ScriptedRewriter(fail_after=2), tiny_tokenizer)
    assert read_jsonl(run / REWRITTEN_FILE) == expected[: sum(t["problem_id"] in problems[:2] for t in traces)]
    # a torn append of the third tree: one whole record and half a line
    third = [r for r in expected if r["problem_id"] == problems[2]]
    with (run / REWRITTEN_FILE).open("a", encoding="utf-8") as f:
        f.write(json.dumps(third[0]) + "\n" + json.dumps(third[-1])[:40])
    engine = ScriptedRewriter()
    counts = rewrite_folder(run, args, TraceArgs(), engine, tiny_tokenizer)
    assert read_jsonl(run / REWRITTEN_FILE) == expected  # nothing lost, nothing twice, traces.jsonl order
    assert len(engine.calls) == len(problems) - 2 - (len(third) == 1)  # the third tree again, unless it was whole
    assert counts["traces"] == len(traces) and 0 < counts["rewritten_paragraphs"] <= counts["rewritable_paragraphs"]
    assert read_jsonl(run / "traces.jsonl") == traces  # the originals stay


def check_rewritten(out: Path) -> list[dict]:
    """Real-model rewrites: every kept paragraph passed the rules, so answers and backtrack counts are unchanged."""
    traces, rewritten = read_jsonl(out / "traces.jsonl"), read_jsonl(out / REWRITTEN_FILE)
    assert [r["original_trace"] for r in rewritten] == [t["trace"] for t in traces]
    for record in rewritten:
        assert extract_final_answer(record["trace"]) == extract_final_answer(record["original_trace"])
        assert count_backtracks(record["trace"]) == count_backtracks(record["original_trace"])
        assert "\n\n\n" not in record["trace"] and not re.search(r"\n\n\s*\n\n", record["trace"])
        assert 0 <= record["rewritten_paragraphs"] <= record["rewritable_paragraphs"] > 0
    return rewritten


def test_tiny_llama_rewrites_through_vllm(search_dir, tmp_path, vllm_engine, tiny_tokenizer):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("trees.jsonl", "traces.jsonl"):
        (out / name).write_bytes((search_dir / name).read_bytes())
    args = RewriteArgs(temperature=1.0, max_tokens=24, context_chars=300, batch_trees=2)
    counts = rewrite_folder(out, args, TraceArgs(), vllm_engine, tiny_tokenizer)
    assert counts["traces"] == len(check_rewritten(out)) > 0


def test_astro_search_rewrites_with_its_own_hf_engine_and_shards_merge(tiny_model_dir, tmp_path, capsys):
    argv = ["--config", str(REPO / "configs/search/synthetic.yaml"), "--limit", "4",
            "--search.iterations", "6", "--rewrite.enabled", "true", "--rewrite.engine.kind", "hf",
            "--rewrite.engine.model", str(tiny_model_dir), "--rewrite.max_tokens", "12",
            "--rewrite.context_chars", "200"]
    assert search_main([*argv, "--out_dir", str(tmp_path / "whole")]) == 0
    assert '{"rewrite": {"traces": ' in capsys.readouterr().out
    whole = check_rewritten(tmp_path / "whole")
    sharded = tmp_path / "sharded"
    for shard in ("0/2", "1/2"):
        assert search_main([*argv, "--out_dir", str(sharded), "--shard", shard]) == 0
    assert search_main(["--merge", str(sharded)]) == 0
    assert check_rewritten(sharded) == whole  # greedy rewrites of the same traces, combined in problem order


def test_rewrite_without_a_model_is_refused_before_the_search(tmp_path, capsys):
    with pytest.raises(ValueError, match="--rewrite.enabled needs --rewrite.engine.model"):
        search_main(["--config", str(REPO / "configs/search/synthetic.yaml"), "--out_dir", str(tmp_path / "o"),
                     "--rewrite.enabled", "true"])
    assert not (tmp_path / "o" / "trees.jsonl").exists()
