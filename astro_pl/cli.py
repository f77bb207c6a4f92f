"""`astro` command: maps each subcommand to the code that runs it; nothing else lives here.

    astro search     --config configs/search/<name>.yaml   MCTS trees + ASTRO traces   (astro_pl.search.run)
    astro view-tree  TREES.jsonl --index i --out tree.html   one tree as an HTML page   (astro_pl.search.view)
    astro tiny-model --texts traces.jsonl --out DIR           tokenizer + tiny Llama (astro_pl.modules.tiny_llama)
    astro pad-heads  --model DIR --out DIR --head_dim 32      heads vLLM runs, same logits (modules.head_padding)
    astro fit|validate|test --config configs/<stage>/<name>.yaml   LightningCLI: SFT / RL (astro_pl.training_cli)
    astro eval       --config configs/eval/<name>.yaml      benchmarks and analysis     (astro_pl.evaluation.run)
    astro pipeline   --config configs/quickstart.yaml       search -> SFT -> RL -> eval  (astro_pl.pipeline)
    astro ablation   --config configs/ablation/graph.yaml   pipelines per arm x seed, compared (astro_pl.ablation)
    astro select-prompts   --config configs/select_prompts/<name>.yaml   RL prompts in a pass-rate band
                                                                      (astro_pl.evaluation.select_prompts)
    astro eval-checkpoints --eval_config <eval yaml> --folder <RL run>  accuracy vs backtracks across RL
                                                                      (astro_pl.evaluation.checkpoints)
    astro report     RUN_DIR [--out report.html]          one HTML page per run (astro_pl.evaluation.html_report)

A known bad input or a failure the user caused (`astro_pl.errors.user_message`) prints one line
`astro <command>: error: ...` and exits with code 2; `--debug` (any position) or ASTRO_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

from astro_pl.errors import user_message

# subcommand -> (module, function taking argv list, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "search": ("astro_pl.search.run", "main", "run MCTS over problems and write trees and ASTRO traces"),
    "view-tree": ("astro_pl.search.view", "main", "render one search tree as a self-contained HTML page"),
    "tiny-model": ("astro_pl.modules.tiny_llama", "main", "fit a tokenizer on traces and write a tiny Llama"),
    "pad-heads": ("astro_pl.modules.head_padding", "main",
                  "zero-pad a model's attention heads to a size vLLM runs, with the same logits"),
    "fit": ("astro_pl.training_cli", "main", "train (SFT or RL) with LightningCLI"),
    "validate": ("astro_pl.training_cli", "main", "validate a LightningModule with LightningCLI"),
    "test": ("astro_pl.training_cli", "main", "test a LightningModule with LightningCLI"),
    "eval": ("astro_pl.evaluation.run", "main", "evaluate a checkpoint on MATH-500 / AMC 2023 / AIME 2024"),
    "pipeline": ("astro_pl.pipeline", "main", "chain search, SFT, RL and evaluation"),
    "ablation": ("astro_pl.ablation", "main", "run pipelines per arm and seed, then compare them"),
    "select-prompts": ("astro_pl.evaluation.select_prompts", "main",
                       "score candidate RL prompts with the policy and keep those in a pass-rate band"),
    "eval-checkpoints": ("astro_pl.evaluation.checkpoints", "main",
                         "evaluate RL checkpoints: accuracy, backtracks and length against step, Pearson r"),
    "report": ("astro_pl.evaluation.html_report", "main", "write a pipeline run's report.html"),
}

LIGHTNING_SUBCOMMANDS = {"fit", "validate", "test"}


def usage() -> str:
    lines = ["usage: astro <command> [--config FILE] [options] [--debug]", "", "commands:"]
    lines += [f"  {name:<16} {help_text}" for name, (_, _, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("ASTRO_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in {"-h", "--help"}:
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"astro: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, function_name, _ = COMMANDS[command]
    try:
        run = getattr(importlib.import_module(module_name), function_name)
        return run([command, *rest] if command in LIGHTNING_SUBCOMMANDS else rest)
    except Exception as err:
        message = user_message(err)
        if debug or message is None:
            raise
        print(f"astro {command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
