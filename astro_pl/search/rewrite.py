"""Procedure cloning, case 1: an LLM rewrites the steps of linearised traces so each chain of thought reads as one
voice, and writes its own go-back sentences ("Let's go back to where we set up the equation.").

The pass runs after the search, over the folder's traces.jsonl (`astro search --rewrite.enabled true`). Each trace's
paragraphs are rebuilt from its tree (`linearize.trace_segments`, the search's own `--traces` settings; a trace that
does not rebuild to its text is refused), and every step and every backtrack becomes one prompt; the prompts of
`batch_trees` trees go to the engine in one call. Restarts, positive self-checks and the conclusion keep their fixed
sentences, and a written go-back sentence starts with `go_back`, so `astro eval` still counts reflections and
backtracks in a model trained on the rewrites.

Model output is untrusted text: a rewrite is kept only if it passes `accept_step` / `accept_go_back` (the original
paragraph stays otherwise), so a rewrite cannot change a step's numbers or final answer, add a reflection or
backtrack of its own, or be cut off at the token limit.

Output: rewritten.jsonl, one record per trace in traces.jsonl order: the trace record with `trace` rewritten,
`original_trace` (the search's text) beside it, and `rewritten_paragraphs` of `rewritable_paragraphs`. A tree's
records are appended in one synced write; a rerun drops a tree left incomplete by a kill and rewrites only the rest.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from astro_pl.data.chat import render_prompt
from astro_pl.rewards.math import answers_match, extract_final_answer
from astro_pl.rollout.base import Completion, EngineArgs, RolloutEngine, SamplingArgs
from astro_pl.runfiles import append_jsonl, drop_torn_tail, read_jsonl
from astro_pl.search.linearize import TraceArgs, trace_segments
from astro_pl.search.tree import SearchTree, read_trees
from astro_pl.search.verbalize import Segment, join_segments

REWRITTEN_FILE = "rewritten.jsonl"

STEP_INSTRUCTION = (
    "Here is a math problem, the solution written so far, and its next step. Rewrite the next step in the first "
    "person, as the same writer continuing the solution in one voice. Keep every number, expression and result "
    "exactly as it is, add no new calculation, and do not check or doubt the work. Reply with the rewritten step "
    "only.\n\nProblem:\n{problem}\n\nSolution so far:\n{before}\n\nNext step:\n{step}"
)
GO_BACK_INSTRUCTION = (
    "Here is a math problem and a solution in progress whose last attempt went wrong. The writer now goes back to an "
    "earlier step and tries again from there. Finish the sentence that says where they go back to, naming in a few "
    "words what that step did (for example: \"Let's go back to where we set up the equation.\"). Do not solve "
    "anything and do not state an answer.\n\nProblem:\n{problem}\n\nSolution so far:\n{before}\n\n"
    "Step to go back to:\n{target}"
)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_SENTENCE = re.compile(r"[^\n]*?[.!?](?=\s|$)")


@dataclass
class RewriteArgs:
    """The optional LLM rewrite of traces after the search.

    Args:
        enabled: Rewrite the traces into rewritten.jsonl after the search (traces.jsonl is kept as is).
        engine: The rewriting model (`kind`, `model`, ...); None: the search's own model (`--proposer llm`),
            reused without a restart.
        temperature: Sampling temperature of the rewrites (0: greedy).
        max_tokens: Most tokens per rewritten paragraph; a rewrite cut off there is dropped.
        context_chars: Most characters of the solution so far shown with each paragraph (its end is kept).
        go_back: Start of every written go-back sentence, completed by the model. Keep it starting with a backtrack
            phrase of `astro eval --backtrack_phrases` (default "Let's go back to") so evaluation counts it.
        batch_trees: Trees whose traces go into one engine call and one append.
        seed: Sampling seed.
    """

    enabled: bool = False
    engine: EngineArgs | None = None
    temperature: float = 0.0
    max_tokens: int = 256
    context_chars: int = 3000
    go_back: str = "Let's go back to where we"
    batch_trees: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"--rewrite.temperature must be >= 0, got {self.temperature}")
        for flag in ("max_tokens", "context_chars", "batch_trees"):
            if getattr(self, flag) < 1:
                raise ValueError(f"--rewrite.{flag} must be >= 1, got {getattr(self, flag)}")
        if not self.go_back.strip():
            raise ValueError("--rewrite.go_back must be non-empty (the start of every go-back sentence)")


def check_rewrite(args: RewriteArgs, proposer: str) -> None:
    """Refuses a rewrite without a model, before the search starts."""
    if args.enabled and args.engine is None and proposer != "llm":
        raise ValueError("--rewrite.enabled needs --rewrite.engine.model (or --proposer llm, whose model rewrites)")


# ---- prompts and parsing (pure) ---------------------------------------------------------------------------


def context(segments: Sequence[Segment], max_chars: int) -> str:
    """The solution so far (paragraphs joined), shortened to its last `max_chars` characters at a paragraph start."""
    text = join_segments(segments)
    if len(text) <= max_chars:
        return text
    tail = text[-max_chars:]
    cut = tail.find("\n\n")
    return "..." + (tail[cut:] if cut >= 0 else tail)


def rewrite_requests(problem: str, segments: Sequence[Segment], steps: dict[int, str], max_chars: int
                     ) -> list[tuple[int, str]]:
    """(segment index, instruction) for every step and backtrack of one trace; `steps` maps node ids to step text
    (the text a backtrack returns to). Restarts, checks and the conclusion are not rewritten."""
    requests = []
    for i, segment in enumerate(segments):
        before = context(segments[:i], max_chars) or "(nothing yet)"
        if segment.kind == "step":
            requests.append((i, STEP_INSTRUCTION.format(problem=problem, before=before, step=segment.text)))
        elif segment.kind == "backtrack":
            target = steps[segment.node]
            requests.append((i, GO_BACK_INSTRUCTION.format(problem=problem, before=before, target=target)))
    return requests


def fold(text: str) -> str:
    """One paragraph: lines stripped, blank lines dropped (a blank line would split the step in two)."""
    return "\n".join(line.strip() for line in text.strip().splitlines() if line.strip())


def accept_step(original: str, completion: Completion, banned: Sequence[str],
                checker: Callable[[str, str], bool] = answers_match) -> str | None:
    """The rewritten step, or None when it must not replace `original`: cut off at the token limit, empty, holding
    a banned (reflection or backtrack) phrase, missing a number of the original, or changing its final answer."""
    text = fold(completion.text)
    if completion.finish_reason == "length" or not text:
        return None
    if any(phrase.lower() in text.lower() for phrase in banned if phrase):
        return None
    if not set(_NUMBER.findall(original)) <= set(_NUMBER.findall(text)):
        return None
    before, after = extract_final_answer(original), extract_final_answer(text)
    if before is None:
        return text if "\\boxed" not in text else None
    return text if after is not None and (after == before or checker(after, before)) else None


def accept_go_back(go_back: str, completion: Completion, banned: Sequence[str]) -> str | None:
    """`go_back` + the model's first sentence, or None when that sentence is missing, unfinished, over 200
    characters, holds a banned phrase or a `\\boxed` answer."""
    match = _SENTENCE.match(completion.text.strip())
    clause = match.group(0).strip() if match else ""
    if not clause or len(clause) > 200 or "\\boxed" in clause:
        return None
    if any(phrase.lower() in clause.lower() for phrase in banned if phrase):
        return None
    return f"{go_back.strip()} {clause}"


def apply_rewrites(segments: Sequence[Segment], rewrites: dict[int, str], reflection: str) -> list[Segment]:
    """Segments with accepted rewrites in place; a backtrack keeps its reflection before the written sentence."""
    out = list(segments)
    for i, text in rewrites.items():
        out[i] = segments[i]._replace(text=f"{reflection} {text}".strip() if segments[i].kind == "backtrack" else text)
    return out


# ---- the batched pass -------------------------------------------------------------------------------------


class TraceRewriter:
    """Rewrites the traces of several trees in one engine call.

    Args:
        engine: Any rollout engine.
        render: Turns an instruction into a prompt (e.g. `functools.partial(render_prompt, tokenizer)`).
        args: Sampling, context and go-back settings.
        traces: The search's trace settings (phrases, self-check threshold), to rebuild each trace's paragraphs.
        checker: Answer equivalence for a step's final answer.
    """

    def __init__(self, engine: RolloutEngine, render: Callable[[str], str], args: RewriteArgs, traces: TraceArgs,
                 checker: Callable[[str, str], bool] = answers_match) -> None:
        self.engine, self.render, self.args, self.traces, self.checker = engine, render, args, traces, checker
        phrases = traces.phrases
        self.reflection = f"{phrases.question} {phrases.doubt}".strip()
        self.banned = [phrases.question, phrases.doubt, phrases.confirm, phrases.restart,
                       phrases.backtrack.split("{step}")[0], args.go_back]

    def segments(self, tree: SearchTree, record: dict) -> list[Segment]:
        """The paragraphs of a trace record, rebuilt from its tree and checked against its text."""
        segments = trace_segments(tree, record["terminal_ids"], self.traces, record["kind"])
        if join_segments(segments) != record["trace"]:
            raise ValueError(f"trace of problem {record['problem_id']!r} (terminals {record['terminal_ids']}) does "
                             "not rebuild from its tree with these --traces settings; rewrite with the search's own")
        return segments

    def rewrite(self, batch: Sequence[tuple[SearchTree, Sequence[dict]]]) -> list[list[dict]]:
        """Rewritten records per tree of `batch` (tree, its trace records), from one engine call."""
        jobs, prompts = [], []  # jobs: (tree index, record index, segment index)
        all_segments = [[self.segments(tree, r) for r in records] for tree, records in batch]
        for t, (tree, _) in enumerate(batch):
            steps = {node.id: node.text for node in tree.nodes}
            for r, segments in enumerate(all_segments[t]):
                for i, instruction in rewrite_requests(tree.problem, segments, steps, self.args.context_chars):
                    jobs.append((t, r, i))
                    stem = self.args.go_back.strip() if segments[i].kind == "backtrack" else ""
                    prompts.append(self.render(instruction) + stem)  # the model finishes the go-back sentence
        params = SamplingArgs(n=1, temperature=self.args.temperature, max_tokens=self.args.max_tokens,
                              seed=self.args.seed, logprobs=False)
        outputs = self.engine.generate(prompts, params) if prompts else []
        rewrites: dict[tuple[int, int], dict[int, str]] = {}
        for (t, r, i), completions in zip(jobs, outputs, strict=True):
            segment = all_segments[t][r][i]
            text = (accept_go_back(self.args.go_back, completions[0], self.banned) if segment.kind == "backtrack"
                    else accept_step(segment.text, completions[0], self.banned, self.checker))
            if text is not None:
                rewrites.setdefault((t, r), {})[i] = text
        asked = Counter((t, r) for t, r, _ in jobs)
        return [[{**record, "trace": join_segments(apply_rewrites(all_segments[t][r], rewrites.get((t, r), {}),
                                                                  self.reflection)),
                  "original_trace": record["trace"], "rewritten_paragraphs": len(rewrites.get((t, r), {})),
                  "rewritable_paragraphs": asked[(t, r)]}
                 for r, record in enumerate(records)] for t, (_, records) in enumerate(batch)]


def drop_incomplete_tree(path: Path, expected: dict[str, int]) -> None:
    """Cuts the last tree's records when fewer than `expected[problem_id]` of them were written (a killed append);
    earlier trees are complete because each tree is appended in one write."""
    drop_torn_tail(path)
    records = read_jsonl(path)
    if not records:
        return
    last = str(records[-1]["problem_id"])
    written = sum(1 for r in records if str(r["problem_id"]) == last)
    if written < expected.get(last, 0):
        keep = len(records) - written
        with path.open("r+b") as f:
            lines = f.read().splitlines(keepends=True)
            f.seek(0)
            f.truncate(sum(len(line) for line in lines[:keep]))


def rewrite_folder(out_dir: Path, args: RewriteArgs, traces: TraceArgs, engine: RolloutEngine | None = None,
                   tokenizer=None, checker: Callable[[str, str], bool] = answers_match) -> dict:
    """Rewrites the traces of `out_dir` into rewritten.jsonl, resuming after the trees already rewritten.

    Args:
        out_dir: A search folder (trees.jsonl, traces.jsonl).
        args: Rewrite settings; `args.engine` is built (and closed) when given, else `engine` is used.
        traces: The search's trace settings.
        engine: The search's engine, reused when `args.engine` is None.
        tokenizer: The tokenizer of `engine` (prompt rendering).
        checker: Answer equivalence for a step's final answer.

    Returns:
        Counts: traces, rewritten_paragraphs and rewritable_paragraphs over the whole file.
    """
    from astro_pl.loading import load_tokenizer
    from astro_pl.rollout import build_engine

    traces_path, out_path = out_dir / "traces.jsonl", out_dir / REWRITTEN_FILE
    by_problem: dict[str, list[dict]] = {}
    for record in read_jsonl(traces_path):
        by_problem.setdefault(str(record["problem_id"]), []).append(record)
    drop_incomplete_tree(out_path, {pid: len(records) for pid, records in by_problem.items()})
    done = {str(r["problem_id"]) for r in read_jsonl(out_path)}
    todo = [pid for pid in by_problem if pid not in done]
    print(f"astro search --rewrite: {len(by_problem) - len(todo)} trees already rewritten in {out_path}, "
          f"{len(todo)} to rewrite")
    if todo:
        wanted = set(todo)
        trees = {t.problem_id: t for t in read_trees(out_dir / "trees.jsonl") if t.problem_id in wanted}
        own = args.engine is not None
        if own:
            tokenizer = load_tokenizer(args.engine.tokenizer or args.engine.model)
            engine = build_engine(args.engine)
        if engine is None or tokenizer is None:
            raise ValueError("--rewrite.enabled needs --rewrite.engine.model (or --proposer llm, whose model rewrites)")
        try:
            rewriter = TraceRewriter(engine, lambda text: render_prompt(tokenizer, text), args, traces, checker)
            for start in range(0, len(todo), args.batch_trees):
                batch = [(trees[pid], by_problem[pid]) for pid in todo[start:start + args.batch_trees]]
                try:
                    rewritten = rewriter.rewrite(batch)
                except ValueError as err:  # a trace that does not rebuild from its tree
                    raise ValueError(f"{traces_path}: {err}") from None
                for records in rewritten:
                    append_jsonl(out_path, records)
        finally:
            if own:
                engine.close()
    written = read_jsonl(out_path)
    counts = {"traces": len(written),
              "rewritten_paragraphs": sum(r["rewritten_paragraphs"] for r in written),
              "rewritable_paragraphs": sum(r["rewritable_paragraphs"] for r in written)}
    print(json.dumps({"rewrite": counts}))
    return counts
