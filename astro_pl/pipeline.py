"""`astro pipeline`: chains ordinary `astro` commands (search -> model -> SFT -> RL -> eval) and reports them.

The pipeline owns no training logic: each stage is an `astro <command>` run as a subprocess with its own config,
so any stage can be rerun by hand with the printed command. A finished stage leaves `<output_dir>/.done/<name>`
holding its exact command (after substitution) and the hash of each config file it names. A rerun skips a stage
only when that record matches; a stage that finished with another command (a new seed, a changed config) is
refused naming what differs, unless `--start_from` asks to rerun it. The output folder is locked while a
pipeline runs in it.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import platform
import re
import selectors
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from astro_pl.errors import UsageError
from astro_pl.evaluation.comparison import compare_runs
from astro_pl.options import parse_dataclass
from astro_pl.runfiles import claim, read_json, write_json


@dataclass
class Stage:
    """One step of the pipeline.

    Args:
        name: Stage name, unique within the pipeline (used by --start_from and in the table).
        command: `astro` arguments; "{output_dir}", "{seed}" and the pipeline's `variables` are substituted.
        summary: An `astro eval` summary.json (same substitutions) read after the stage for the table: its
            benchmark's pass@1 is the stage's accuracy. Empty for stages that evaluate nothing.
        benchmark: Which benchmark of that summary to report; empty when it holds only one.
        artifacts: Named paths (same substitutions) recorded in the pipeline summary, e.g. traces or checkpoints.
    """

    name: str
    command: list[str]
    summary: str = ""
    benchmark: str = ""
    artifacts: dict[str, str] = field(default_factory=dict)


def substitute(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


BAR = re.compile(r"\|\s*[\d.]+[kMGT]?/(?:[\d.]+[kMGT]?|\?) \[")  # tqdm's "| 5/12 [" or "| 0/? ["
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def is_bar(segment: str) -> bool:
    """Whether a line (or "\r"-redrawn segment) is a tqdm progress bar."""
    return BAR.search(segment) is not None


class StageConsole:
    """What a person sees of a stage: its stdout lines (a command's results) and one progress line, redrawn in place
    with the latest progress bar. stderr (library logs, warnings) only reaches the log, which gets both streams
    verbatim. Library bars that are not the stage's loop (weight loading and saving) are off in stages (`run_stage`)."""

    def __init__(self, console, log) -> None:
        self.console, self.log = console, log
        self.pending = {"stdout": "", "stderr": ""}
        self.shown = ""  # the progress line on the console now ("" when none)
        self.recent: list[str] = []  # last diagnostic lines, shown when the stage fails

    def feed(self, stream: str, text: str) -> None:
        self.log.write(text.encode("utf-8", "replace"))
        self.log.flush()  # `tail -f` on the log follows the stage
        *segments, self.pending[stream] = re.split(r"(?<=[\r\n])", self.pending[stream] + text)
        for segment in segments:
            self.segment(stream, ANSI.sub("", segment).rstrip("\r\n"))

    def segment(self, stream: str, text: str) -> None:
        if is_bar(text):
            self.console.write("\r" + text.rstrip().ljust(len(self.shown)))
            self.shown = text.rstrip()
        elif stream == "stdout" and text.strip():
            self.end_line()
            self.console.write(text + "\n")
        elif text.strip():
            self.recent = (self.recent + [text])[-20:]

    def end_line(self) -> None:
        if self.shown:
            self.console.write("\n")
            self.shown = ""
        self.console.flush()

    def close(self) -> None:
        for stream, rest in self.pending.items():
            if rest:
                self.segment(stream, ANSI.sub("", rest))
        self.end_line()


def stage_record(command: list[str]) -> dict:
    """What a finished stage ran: its substituted command and a hash of every config file it names."""
    files = {arg: hashlib.sha256(Path(arg).read_bytes()).hexdigest()[:16] for arg in command
             if arg.endswith((".yaml", ".yml", ".json")) and Path(arg).is_file()}
    return {"command": command, "config_files": files}


def this_machine() -> str:
    """Where stages run: the processor, the vector instructions torch's CPU kernels use here, any GPU, and torch's
    version. Floating-point results differ between machines that differ in these, and a skill that forms in a phase
    change turns a last-digit difference into another outcome (README, "The graph task"), so every stage's result
    records it."""
    import torch  # the pipeline trains nothing itself; only this asks torch

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu} ({torch.backends.cpu.get_cpu_capability()}){gpu}, torch {torch.__version__}"


def record_difference(earlier: dict, now: dict) -> str:
    """The first difference between two stage records, in words."""
    old, new = earlier.get("command", []), now["command"]
    for i, (a, b) in enumerate(zip(old, new, strict=False)):
        if a != b:
            what = old[i - 1] if i and old[i - 1].startswith("--") else f"argument {i + 1}"
            return f"{what} was {a!r}, now {b!r}"
    if len(old) != len(new):
        return f"the command had {len(old)} arguments, now {len(new)}"
    changed = sorted(k for k in earlier.get("config_files", {}).keys() | now["config_files"].keys()
                     if earlier.get("config_files", {}).get(k) != now["config_files"].get(k))
    return f"config file {', '.join(changed)} changed since" if changed else ""


def finished_record(marker: Path) -> dict:
    """The record a finished stage left ({} for a marker written before records, or a torn one)."""
    try:
        return read_json(marker) or {}
    except ValueError:
        return {}


def run_stage(stage: Stage, values: dict[str, str], log_dir: Path) -> float:
    """Runs one stage: prints its command, one progress line and its results (see `StageConsole`), and writes
    everything it prints to `<log_dir>/<name>.log`; returns seconds. A failed stage shows its last log lines."""
    argv = [sys.executable, "-m", "astro_pl.cli", *(substitute(a, values) for a in stage.command)]
    print(f"\n=== stage {stage.name}: astro {shlex.join(argv[3:])}", flush=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{stage.name}.log"
    start = time.perf_counter()
    with log_path.open("wb") as log:
        console = StageConsole(sys.stdout, log)
        # transformers' weight loading/saving bars would take the progress line from the stage's own loop
        env = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", **os.environ}
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        streams = {proc.stdout: "stdout", proc.stderr: "stderr"}
        decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in streams.values()}
        with selectors.DefaultSelector() as selector:
            for pipe in streams:
                selector.register(pipe, selectors.EVENT_READ)
            while selector.get_map():
                for key, _ in selector.select():
                    # chunks, not lines: progress bars redraw with "\r" and would otherwise show only at the end
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(key.fileobj)
                    console.feed(streams[key.fileobj], decoders[streams[key.fileobj]].decode(chunk, final=not chunk))
        code = proc.wait()
        console.close()
    if code != 0:
        print("\n".join(console.recent), file=sys.stderr)
        raise SystemExit(f"stage {stage.name!r} failed with exit code {code}; log: {log_path}")
    return time.perf_counter() - start


def read_eval_summary(path: Path, benchmark: str = "") -> dict:
    """accuracy (pass@1), truncation_rate, accuracy_finished (pass@1 among samples not cut off), mean_backtracks,
    grounded_backtracks, mean_length and the task's own verdicts (`task`, when it has any) of one benchmark of an
    `astro eval` summary."""
    benchmarks = json.loads(path.read_text(encoding="utf-8"))["benchmarks"]
    if not benchmark:
        if len(benchmarks) != 1:
            raise ValueError(f"{path}: holds benchmarks {sorted(benchmarks)}; name one in the stage's `benchmark`")
        benchmark = next(iter(benchmarks))
    if benchmark not in benchmarks:
        raise ValueError(f"{path}: no benchmark {benchmark!r}; it has {sorted(benchmarks)}")
    scores = benchmarks[benchmark]
    result = {"accuracy": scores["pass@1"], "truncation_rate": scores["truncation_rate"],
              "accuracy_finished": scores["pass@1_finished"], "mean_backtracks": scores["mean_backtracks"],
              "grounded_backtracks": scores.get("grounded_backtracks"), "mean_length": scores["mean_length"]}
    return result | ({"task": scores["task"]} if scores.get("task") else {})


def format_table(rows: list[dict]) -> str:
    header = ("| stage | accuracy | truncated | accuracy of finished | mean backtracks | response length "
              "| wall time (s) |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        cells = [format(row[k], fmt) if row.get(k) is not None else "-"
                 for k, fmt in (("accuracy", ".3f"), ("truncation_rate", ".3f"), ("accuracy_finished", ".3f"),
                                ("mean_backtracks", ".2f"), ("mean_length", ".1f"),
                                ("seconds", ".0f"))]
        lines.append(f"| {row['stage']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_pipeline(stages: list[Stage], output_dir: str, seed: int = 0, start_from: str | None = None,
                 variables: dict[str, str] | None = None) -> dict:
    """Runs the stages in order, skipping finished ones, and writes `<output_dir>/summary.json`; `variables` are
    substituted in the stages' commands beside {output_dir} and {seed}."""
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique, got {names}")
    if start_from is not None and start_from not in names:
        raise ValueError(f"--start_from {start_from!r} is not a stage; stages: {', '.join(names)}")
    out = Path(output_dir)
    with claim(out, "--output_dir"):
        values = {**(variables or {}), "output_dir": str(out), "seed": str(seed)}
        return run_stages(stages, out, values, seed, start_from, this_machine())


def run_stages(stages: list[Stage], out: Path, values: dict[str, str], seed: int, start_from: str | None,
               machine: str) -> dict:
    done_dir, names = out / ".done", [s.name for s in stages]
    if start_from is not None:
        for name in names[names.index(start_from):]:
            (done_dir / name).unlink(missing_ok=True)
    summary_path = out / "summary.json"
    try:  # a torn summary (killed while writing) only means its stages run again
        previous = read_json(summary_path, missing_ok=True) or {"stages": {}}
    except ValueError:
        previous = {"stages": {}}
    results: dict[str, dict] = {}
    for stage in stages:
        marker = done_dir / stage.name
        record = stage_record([substitute(a, values) for a in stage.command])
        if marker.exists() and stage.name in previous.get("stages", {}):
            difference = record_difference(finished_record(marker), record)
            if difference:
                raise UsageError(f"--output_dir {out}: stage {stage.name!r} finished with another command "
                                 f"({difference}); rerun it with --start_from {stage.name}, or use another "
                                 "--output_dir")
            print(f"=== stage {stage.name}: done before, skipped", flush=True)
            results[stage.name] = previous["stages"][stage.name]
            continue
        seconds = run_stage(stage, values, out / "logs")
        result: dict = {"seconds": round(seconds, 1), "machine": machine,
                        "artifacts": {k: substitute(v, values) for k, v in stage.artifacts.items()}}
        if stage.summary:
            result |= read_eval_summary(Path(substitute(stage.summary, values)), stage.benchmark)
            result["eval_summary"] = substitute(stage.summary, values)  # for `astro report`
        results[stage.name] = result
        write_json(summary_path, {"seed": seed, "stages": results})
        write_json(marker, record)
    summary = {"seed": seed, "stages": results}
    write_json(summary_path, summary)
    print("\n" + format_table([{"stage": name, **r} for name, r in results.items()]), flush=True)
    print(f"\nsummary: {summary_path}", flush=True)
    return summary


@dataclass
class PipelineArgs:
    """`astro pipeline`: the stages to chain and where they write."""

    stages: list[Stage] = field(default_factory=list)
    """The stages, in order."""
    output_dir: str = "runs/quickstart"
    """Where every stage writes."""
    seed: int = 0
    """Substituted for {seed} in stage commands."""
    variables: dict[str, str] = field(default_factory=dict)
    """More {name} -> value substitutions, e.g. which traces config the search stage reads (an ablation's arms
    differ in one variable)."""
    start_from: str | None = None
    """Rerun from this stage on."""
    compare: str | None = None
    """Print the side-by-side table of the <arm>-seed<N> runs under this folder, and exit."""


def main(argv: list[str] | None = None) -> int:
    cfg = parse_dataclass(PipelineArgs, "astro pipeline", __doc__.split("\n\n")[0], argv)
    if cfg.compare:
        print(compare_runs(cfg.compare))
        return 0
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    run_pipeline(cfg.stages, cfg.output_dir, cfg.seed, cfg.start_from, cfg.variables)
    from astro_pl.evaluation.html_report import write_run_report

    print(f"report: {write_run_report(cfg.output_dir)}", flush=True)
    return 0
