"""Path finding in a graph given in the prompt: the path-star task (Bachmann & Nagarajan 2024) where search pays.

A start node S has `arms` arms, each a chain of `arm_length` nodes; one arm ends at the goal G, the others at dead
ends (no outgoing edge). Optional distractors hang one-node dead ends off S and the arms' inner nodes, so a trace
may go back to a step in the middle of an arm. Node ids are drawn from a range (one token each once the tokenizer
keeps numbers whole: `astro tiny-model --split_digits false`) and the edge list is shuffled, so the first move needs
look-ahead, while checking a move is a lookup in the prompt: the setting where our pilot found ASTRO traces beat
direct ones (../shared/ASTRO.md, last section).

    problem: "edges: 12>57 57>44 97>57 ... | start 97 goal 71"      gold: "97 98 77 71"
    steps:   "97>57"  "57>44"  "44>43 dead"  (back)  "97>98"  "98>77"  "77>71 \\boxed{97 98 77 71}"

- `ScriptedGraphTeacher` is an environment: a step moves along one outgoing edge of the current node; a dead end
  ("dead") and the goal (the walked path in `\\boxed{}`) are terminals. A dead end's `Step.answer` is its walked
  path, which never equals the gold (that ends at G), so Algorithm 1 counts each dead end as its own wrong attempt
  (answerless terminals would all count as one, allowing a single backtrack per trace).
- `GraphTask.sound` accepts a path only if every step is a move along a prompt edge from the current node, in the
  teacher's wording. Answers are parsed, never evaluated.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from astro_pl.data.problems import Problem
from astro_pl.tasks.base import ReadStep, Split, State, Step, Task, normalise

DEAD = "dead"
"""The word a step says at a node with no outgoing edge."""
GOAL = "goal"
"""The word the goal edge leads to ("71>goal", `GraphTask(goal_edge=True)`)."""
_PROBLEM = re.compile(rf"edges: (\d+>\d+(?: \d+>\d+)*)(?: (\d+)>{GOAL})? \| start (\d+) goal (\d+)")
_MOVE = re.compile(r"(\d+)>(\d+)")
_PATH_SEPARATORS = re.compile(r"[\s,>]+")
MAX_REPEATS = 10_000
"""Draws in a row that repeat a known graph before the generator gives up."""


class Graph(NamedTuple):
    """One instance: directed edges (in prompt order), start and goal node."""

    edges: tuple[tuple[int, int], ...]
    start: int
    goal: int

    def successors(self, node: int) -> list[int]:
        return [b for a, b in self.edges if a == node]

    def dead_end(self, node: int) -> bool:
        """No outgoing edge, and not the goal (which has none either)."""
        return node != self.goal and not self.successors(node)


def format_graph(graph: Graph, goal_edge: bool = False) -> str:
    """The problem text: "edges: 12>57 57>44 | start 97 goal 71", with `goal_edge` "edges: 12>57 57>44 71>goal |
    start 97 goal 71"."""
    edges = " ".join(f"{a}>{b}" for a, b in graph.edges) + (f" {graph.goal}>{GOAL}" if goal_edge else "")
    return f"edges: {edges} | start {graph.start} goal {graph.goal}"


def parse_graph(text: str) -> Graph | None:
    """The graph of a problem text (`format_graph`'s format), or None for any other text."""
    match = _PROBLEM.fullmatch(text.strip())
    if match is None or match.group(2) not in (None, match.group(4)):
        return None
    edges = tuple((int(a), int(b)) for a, b in _MOVE.findall(match.group(1)))
    return Graph(edges, int(match.group(3)), int(match.group(4)))


def parse_path(text: str) -> tuple[int, ...] | None:
    """Node ids of an answer "97 98 77 71" (also "97>98>77>71" or commas), or None if anything else is in it."""
    parts = [p for p in _PATH_SEPARATORS.split(text.strip()) if p]
    if not parts or not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def format_path(path: Sequence[int]) -> str:
    return " ".join(str(n) for n in path)


def valid_path(edges: Sequence[tuple[int, int]], start: int, goal: int, path: Sequence[int]) -> bool:
    """Whether `path` runs from `start` to `goal` along `edges` only."""
    edge_set = set(edges)
    return (len(path) >= 2 and path[0] == start and path[-1] == goal
            and all((a, b) in edge_set for a, b in zip(path, path[1:], strict=False)))


def gold_path(graph: Graph) -> tuple[int, ...]:
    """The unique start-to-goal path (depth-first; the path-star graph is a tree rooted at the start)."""
    stack = [(graph.start,)]
    while stack:
        path = stack.pop()
        if path[-1] == graph.goal:
            return path
        stack.extend(path + (b,) for b in graph.successors(path[-1]) if b not in path)
    raise ValueError(f"no path from {graph.start} to {graph.goal}")


def path_star(rng: random.Random, arms: int, arm_length: int, node_min: int, node_max: int,
              distractors: int = 0) -> Graph:
    """One random path-star instance: distinct node ids, the goal arm chosen at random, edges shuffled."""
    ids = rng.sample(range(node_min, node_max + 1), 1 + arms * arm_length + distractors)
    start, chains = ids[0], [ids[1 + i * arm_length: 1 + (i + 1) * arm_length] for i in range(arms)]
    edges = [(a, b) for chain in chains for a, b in zip([start, *chain], chain, strict=False)]
    inner = [start] + [node for chain in chains for node in chain[:-1]]
    edges += [(rng.choice(inner), leaf) for leaf in ids[1 + arms * arm_length:]]
    rng.shuffle(edges)
    return Graph(tuple(edges), start, rng.choice(chains)[-1])


def graph_key(graph: Graph) -> tuple:
    """What makes two instances the same problem, whatever the order of their edges."""
    return frozenset(graph.edges), graph.start, graph.goal


def graph_stream(seed: int, arms: int, arm_length: int, node_min: int, node_max: int, distractors: int,
                 exclude: frozenset = frozenset()) -> Iterator[Graph]:
    """Endless seeded instances, none repeated and none whose `graph_key` is in `exclude` (other splits); raises
    once `MAX_REPEATS` draws in a row found nothing new (the id range holds too few distinct graphs)."""
    rng, seen, repeats = random.Random(f"graph:{seed}"), set(exclude), 0
    while repeats < MAX_REPEATS:
        graph = path_star(rng, arms, arm_length, node_min, node_max, distractors)
        key = graph_key(graph)
        if key in seen:
            repeats += 1
            continue
        seen.add(key)
        repeats = 0
        yield graph
    raise ValueError(f"found no new graph in {MAX_REPEATS} draws after {len(seen)}: widen --task.init_args.node_min/"
                     "node_max or lower num_train/num_val/num_test")


def describe_move(graph: Graph, path: Sequence[int], node: int) -> ReadStep:
    """The step moving from the end of `path` to `node`. A dead end says "dead" and its answer is the walked path (a
    wrong attempt); the goal states the path in `\\boxed{}`."""
    walked = format_path([*path, node])
    text = f"{path[-1]}>{node}"
    if node == graph.goal:
        return ReadStep(f"{text} \\boxed{{{walked}}}", True, walked)
    if not graph.successors(node):
        return ReadStep(f"{text} {DEAD}", True, walked)
    return ReadStep(text, False, None)


def read_move(graph: Graph, path: Sequence[int], text: str) -> ReadStep | None:
    """A model's step "a>b ..." read as a move from the end of `path`: the move `describe_move` writes (what the
    model wrote after "a>b" is not trusted: the graph says whether b is a dead end or the goal), or None unless a is
    where the path ends and a>b is one of the prompt's edges."""
    match = _MOVE.match(text.strip())
    if match is None or int(match.group(1)) != path[-1]:
        return None
    node = int(match.group(2))
    if node not in graph.successors(path[-1]) or node in path:
        return None
    return describe_move(graph, path, node)


def walked_path(graph: Graph, steps: Sequence[str]) -> list[int]:
    """The nodes a state's steps walked, from the start (each step's move "a>b" gives the next node b)."""
    path = [graph.start]
    for step in steps:
        match = _MOVE.match(step.strip())
        if match is None:
            raise ValueError(f"not a graph step: {step!r}")
        path.append(int(match.group(2)))
    return path


@dataclass
class GraphTeacherArgs:
    """The scripted graph teacher.

    Args:
        prior_noise: Std of the log-normal noise on each proposed move's prior (1 before normalisation): the prior
            carries no look-ahead, as a model guessing the first move would.
        seed: Seed of the teacher's random streams (one per state and call kind).
    """

    prior_noise: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.prior_noise < 0:
            raise ValueError(f"--teacher.prior_noise must be >= 0, got {self.prior_noise}")


class ScriptedGraphTeacher:
    """Moves along the prompt's edges: proposals are the current node's successors, rollouts random walks."""

    def __init__(self, args: GraphTeacherArgs | None = None):
        self.args = args or GraphTeacherArgs()

    def rng(self, kind: str, state: State) -> random.Random:
        """The stream of one (kind, state), independent of batching (as the arithmetic teacher's)."""
        return random.Random("\x1f".join([str(self.args.seed), kind, state.problem, *state.steps]))

    @staticmethod
    def position(state: State) -> tuple[Graph, list[int]]:
        graph = parse_graph(state.problem)
        if graph is None:
            raise ValueError(f"the graph teacher only solves 'edges: ... | start S goal G' problems, got "
                             f"{state.problem!r}")
        return graph, walked_path(graph, state.steps)

    def propose(self, states: Sequence[State], k: int) -> list[list[Step]]:
        proposals = []
        for state in states:
            (graph, path), rng = self.position(state), self.rng("propose", state)
            nodes = graph.successors(path[-1])
            rng.shuffle(nodes)
            nodes = nodes[:k]
            weights = [math.exp(rng.gauss(0.0, self.args.prior_noise)) for _ in nodes]
            steps = [describe_move(graph, path, node) for node in nodes]
            proposals.append([Step(text, prior, terminal, answer)
                              for (text, terminal, answer), prior in zip(steps, normalise(weights), strict=True)]
                             if nodes else [])
        return proposals

    def rollout(self, states: Sequence[State], m: int) -> list[list[str | None]]:
        answers = []
        for state in states:
            (graph, start), rng = self.position(state), self.rng("rollout", state)
            finals = []
            for _ in range(m):
                path = list(start)
                while nodes := graph.successors(path[-1]):
                    path.append(rng.choice(nodes))
                finals.append(format_path(path))
            answers.append(finals)
        return answers


def sound_steps(problem: str, steps: Sequence[str]) -> bool:
    """Whether every step moves along a prompt edge from the node the path is at, in the teacher's wording (so a
    "dead" only at a node without successors and a box only at the goal, holding the walked path)."""
    graph = parse_graph(problem)
    if graph is None:
        return False
    path = [graph.start]
    for step in steps:
        match = _MOVE.match(step.strip())
        if match is None or int(match.group(1)) != path[-1] or (path[-1], int(match.group(2))) not in graph.edges:
            return False
        node = int(match.group(2))
        if path[-1] == graph.goal or describe_move(graph, path, node)[0] != step.strip():
            return False
        path.append(node)
    return True


class GraphTask(Task):
    """Seeded path-star graphs: train, validation and test sets from three seeds, disjoint instances.

    Args:
        num_train: Training graphs (search expands them, RL samples prompts from them).
        num_val: Validation graphs (settings are picked on these, never on test).
        num_test: Test graphs (`astro eval`).
        seed: Seed of the training graphs; a larger `num_train` extends the same list.
        val_seed: Seed of the validation graphs.
        test_seed: Seed of the test graphs.
        arms: Arms leaving the start node; one reaches the goal (one-shot guessing is right 1/arms of the time).
        arm_length: Nodes per arm.
        node_min: Smallest node id.
        node_max: Largest node id (ids are distinct within a graph).
        distractors: One-node dead ends hung off the start and the arms' inner nodes.
        goal_edge: Also list an edge from the goal to the word "goal" ("71>goal"). The goal has no outgoing edge,
            like a dead end, so telling the two apart needs a second look-up (the node against the prompt's goal),
            which some runs never learn; with the goal edge it was learnt in all 5 runs tried, in 5 of 9 without
            (docs/graph-task-log.md).
        teacher: The scripted teacher's prior noise, for `astro search`.
        system_prompt: Optional system turn.
    """

    def __init__(self, num_train: int = 512, num_val: int = 32, num_test: int = 100, seed: int = 0,
                 val_seed: int = 1_000_003, test_seed: int = 12345, arms: int = 3, arm_length: int = 3,
                 node_min: int = 10, node_max: int = 99, distractors: int = 0, goal_edge: bool = False,
                 teacher: GraphTeacherArgs | None = None, system_prompt: str | None = None):
        super().__init__(system_prompt)
        for flag, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test),
                            ("distractors", distractors)):
            if value < 0:
                raise ValueError(f"--task.init_args.{flag} must be >= 0, got {value}")
        if arms < 2:
            raise ValueError(f"--task.init_args.arms must be >= 2 (one arm leaves nothing to search), got {arms}")
        if arm_length < 1:
            raise ValueError(f"--task.init_args.arm_length must be >= 1, got {arm_length}")
        if not 0 <= node_min <= node_max:
            raise ValueError(f"--task.init_args.node_min/node_max need 0 <= min <= max, got {node_min}, {node_max}")
        if node_max - node_min + 1 < 1 + arms * arm_length + distractors:
            raise ValueError(f"--task.init_args.node_min..node_max holds {node_max - node_min + 1} ids, fewer than "
                             f"the {1 + arms * arm_length + distractors} nodes of a graph")
        if len({seed, val_seed, test_seed}) < 3:
            raise ValueError("--task.init_args.seed, val_seed and test_seed must differ")
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.seeds = {"train": seed, "val": val_seed, "test": test_seed}
        self.shape = dict(arms=arms, arm_length=arm_length, node_min=node_min, node_max=node_max,
                          distractors=distractors)
        self.goal_edge = goal_edge
        self.teacher_args = teacher or GraphTeacherArgs()

    def graphs(self, split: Split) -> list[Graph]:
        """The instances of `split`: test first, then validation without test's, then train without both."""
        exclude: frozenset = frozenset()
        for name in ("test", "val", "train"):
            stream = graph_stream(self.seeds[name], exclude=exclude, **self.shape)
            graphs = [next(stream) for _ in range(self.sizes[name])]
            if name == split:
                return graphs
            exclude = exclude | {graph_key(g) for g in graphs}
        raise ValueError(f"unknown split {split!r}")

    def problems(self, split: Split) -> dict[str, list[Problem]]:
        seed = self.seeds[split]
        return {"graph": [Problem(id=f"graph-{seed}-{i}", problem=format_graph(g, self.goal_edge),
                                  answer=format_path(gold_path(g)),
                                  subject="graph", level=self.shape["arms"])
                          for i, g in enumerate(self.graphs(split))]}

    def check(self, answer: str, gold: str) -> bool:
        """Equal paths after normalising separators (the start-to-goal path of a path-star graph is unique, so
        this is `valid_path` for a gold answer; wrong attempts group by their path)."""
        path = parse_path(answer)
        return path is not None and path == parse_path(gold)

    def read_step(self, state: State, text: str) -> ReadStep | None:
        """A model's move, read against the prompt's graph (`read_move`); None for any other text."""
        graph, path = ScriptedGraphTeacher.position(state)
        return read_move(graph, path, text)

    def teacher(self) -> ScriptedGraphTeacher:
        return ScriptedGraphTeacher(self.teacher_args)

    def sound(self, problem: str, steps: Sequence[str]) -> bool:
        return sound_steps(problem, steps)

    def judge(self, problem: Problem, text: str, answer: str | None) -> dict[str, bool | int | float | None]:
        graph = parse_graph(problem.problem)
        return {} if graph is None else judge_response(graph, text, answer)

    def step_faults(self, problem: Problem, text: str) -> list[tuple[int, int]]:
        graph = parse_graph(problem.problem)
        return [] if graph is None else move_faults(graph, text)


# Judging responses: whether a response really searches (`GraphTask.judge`, reported by `astro eval`). Read off the
# moves "a>b" a response writes, independent of the trace's reflection phrases:
# - first move: the node of the first move is the gold path's second node (needs look-ahead; chance is 1/arms);
# - look-ups: a move leaving a node other than the start follows a prompt edge (the edge look-up every step of a
#   search needs; a model that copies node ids from the prompt without it is right about 1 time in 9);
# - dead-end calls: a move saying "dead" is grounded when it follows a prompt edge to a node without outgoing edge
#   other than the goal;
# - goal check: when the first attempt reaches the goal, it claims it rather than saying "dead" (the goal has no
#   outgoing edge either, so only comparing the node with the prompt's goal tells the two apart: a second look-up,
#   learnt apart from the edge look-up; later attempts can lean on a count instead, as with 3 arms the third
#   attempt of a trace always ends at the goal);
# - first attempt: the moves before the first one that does not continue from the last node (a jump back is a
#   backtrack); it is wrong unless it walks from the start to the goal along prompt edges;
# - recovery: the first attempt is wrong and the final answer is a valid path;
# - false "yes": a final answer is claimed (in `\\boxed{}`, not cut off) but is not a valid path.
_JUDGED_MOVE = re.compile(rf"(\d+)>(\d+)( {DEAD}\b)?")


class Move(NamedTuple):
    source: int
    target: int
    dead: bool
    """Whether the move says the node it reaches is a dead end."""


def moves(text: str) -> list[Move]:
    """The moves "a>b" (and "a>b dead") of a response, in order."""
    return [Move(int(a), int(b), bool(dead)) for a, b, dead in _JUDGED_MOVE.findall(text)]


def first_move_correct(graph: Graph, text: str) -> bool:
    """Whether the first move goes from the start to the gold path's second node."""
    found = moves(text)
    return bool(found) and (found[0].source, found[0].target) == gold_path(graph)[:2]


def dead_end_calls(graph: Graph, text: str) -> list[bool]:
    """One entry per "dead" the response says: True (grounded) when its move is a prompt edge and the node it
    reaches has no outgoing edge and is not the goal (a made-up move or node is no evidence of a check, and "dead"
    at the goal is a missed success)."""
    edges = set(graph.edges)
    return [(m.source, m.target) in edges and graph.dead_end(m.target)
            for m in moves(text) if m.dead]


def edge_lookups(graph: Graph, text: str) -> list[bool]:
    """One entry per move leaving a node other than the start: True when it follows a prompt edge. On a path-star
    graph such a move is a look-up, not a choice, so this tells a learnt look-up from the shape of a search."""
    edges = set(graph.edges)
    return [(m.source, m.target) in edges for m in moves(text) if m.source != graph.start]


def move_faults(graph: Graph, text: str) -> list[tuple[int, int]]:
    """Character spans of the first step of each attempt that breaks the prompt's rules: the node of a move along
    no prompt edge (`57>14` where the edge is `57>13`: the look-up slipped), a "dead" said at a node that has an
    outgoing edge or is the goal (the terminal check slipped), or a paragraph that writes part of a move (a digit,
    ">" or "dead", outside a quoted step) but is no move (`76>^74`, `74 dead`). A move along an edge into a real
    dead end is no fault: that is the search exploring.

    An attempt begins at a move leaving the start or after a phrase (`restart.`, `back to "97>57"`). After its
    first fault it is off the graph, where no next move is right; blaming those moves too made RL push one seed's
    probability onto text that is no move at all (unreadable answers 0.5% -> 13%; docs/graph-task-log.md, "A step
    reward for the slip").
    """
    edges = set(graph.edges)
    spans: list[tuple[int, int]] = []
    offset, derailed = 0, False
    for paragraph in text.split("\n\n"):
        start, offset = offset, offset + len(paragraph) + 2
        body = _QUOTED.sub("", paragraph).strip()
        if not _MOVE_PART.search(body):  # a phrase (or nothing): the search goes back, a new attempt begins
            derailed = False
            continue
        move = _JUDGED_MOVE.search(paragraph) if _WELL_FORMED_MOVE.fullmatch(body) else None
        fault = None
        if move is None:
            fault = (start, start + len(paragraph))
        else:
            source, target = int(move.group(1)), int(move.group(2))
            derailed = derailed and source != graph.start
            if (source, target) not in edges:
                fault = (start + move.start(2), start + move.end(2))
            elif move.group(3) and not graph.dead_end(target):
                fault = (start + move.start(3), start + move.end(3))
        if fault is not None and not derailed:
            spans.append(fault)
            derailed = True
    return spans


_WELL_FORMED_MOVE = re.compile(rf"\d+>\d+(?: {DEAD}| \\boxed\{{[\d ]*\}})?")
_QUOTED = re.compile(r'"[^"\n]*"')
_MOVE_PART = re.compile(rf"[\d>]|\b{DEAD}\b")


def first_attempt(graph: Graph, text: str) -> list[int]:
    """The path of the first attempt: the start, then the moves while each continues from the last node."""
    path = [graph.start]
    for m in moves(text):
        if m.source != path[-1]:
            break
        path.append(m.target)
    return path


def first_goal_claimed(graph: Graph, text: str) -> bool | None:
    """Whether a first attempt that reaches the goal claims it rather than calling it "dead"; None when the first
    attempt ends elsewhere."""
    path = first_attempt(graph, text)
    if path[-1] != graph.goal:
        return None
    return not moves(text)[len(path) - 2].dead


def judge_response(graph: Graph, text: str, answer: str | None) -> dict[str, bool | int | float | None]:
    """What one response did; `answer` is its final answer as scored (None when it claims none or was cut off).

    Returns:
        first_move_correct; edge_lookup_share (of the moves leaving a node other than the start, the share along
        a prompt edge; None without any); dead_calls (how many "dead" it says); grounded_dead_share (of those, the
        share at real dead ends; None without any); first_goal_claimed (a first attempt that reaches the goal claims
        it; None when it ends elsewhere); first_attempt_wrong; recovered (the first attempt is wrong and the final
        answer is a valid path; None when the first attempt is right); false_yes (a final answer is claimed but is
        not a valid path). `astro eval` averages each over the responses where it is not None.
    """
    calls = dead_end_calls(graph, text)
    lookups = edge_lookups(graph, text)
    claimed = None if answer is None else parse_path(answer)
    solved = claimed is not None and valid_path(graph.edges, graph.start, graph.goal, claimed)
    first_wrong = not valid_path(graph.edges, graph.start, graph.goal, first_attempt(graph, text))
    return {"first_move_correct": first_move_correct(graph, text),
            "edge_lookup_share": sum(lookups) / len(lookups) if lookups else None, "dead_calls": len(calls),
            "grounded_dead_share": sum(calls) / len(calls) if calls else None,
            "first_goal_claimed": first_goal_claimed(graph, text),
            "first_attempt_wrong": first_wrong, "recovered": solved if first_wrong else None,
            "false_yes": answer is not None and not solved}
