"""Held-out score of graphs/tool_math.py's base model and a trained checkpoint, both with tools.

Scores with the graph's own evaluation settings (``report.eval_settings``: the prompt source's
format with its example exchanges, the generator's calculator episode and limits, its
temperature), so the two rows are the first two of the tool-math table in the README.

    python bench/tool_math_eval.py CHECKPOINT [--problems 40] [--samples 4] [--engine vllm]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from areal_flow.data.prompting import PromptFormat
    from areal_flow.evaluate import evaluate_models
    from areal_flow.loader import load_graph
    from areal_flow.report import eval_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a trained checkpoint (checkpoints/step_N)")
    parser.add_argument("--problems", type=int, default=40)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--engine", choices=("vllm", "hf"), default="vllm")
    args = parser.parse_args()
    settings = eval_settings(load_graph(ROOT / "graphs" / "tool_math.py", []))
    assert settings is not None
    began = time.monotonic()
    results = evaluate_models(
        [settings.model, args.checkpoint],
        settings.data,
        args.problems,
        args.samples,
        args.samples,
        settings.temperature,
        settings.max_tokens,
        args.engine,
        settings.seed,
        prompt_format=PromptFormat.model_validate(settings.prompt_format),
        episode=settings.episode,
    )
    for row, result in zip(("base, with tools", "trained, with tools"), results, strict=True):
        print(
            json.dumps(
                {
                    "row": row,
                    "pass@1": result.pass1,
                    f"pass@{args.samples}": result.pass_k,
                    "episode": result.episode_metrics,
                    "failed_episodes": result.episode_failures,
                }
            )
        )
    print(f"evaluated in {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
