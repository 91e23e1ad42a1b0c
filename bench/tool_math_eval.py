"""The tool-math table of the README: three rows on the same held-out problems.

1. the base model with tools, 2. a checkpoint of graphs/tool_math.py with tools: both with that
graph's own evaluation settings (``report.eval_settings``: the prompt source's format with its
example exchanges, the generator's calculator episode and limits, its temperature);
3. with ``--single-turn CKPT``: a checkpoint of graphs/math_rl.py without tools, with math_rl's
evaluation settings (its prompt, one answer, its token limit) on tool_math's problems (same
levels, split and seed), i.e. what single-turn RL on arithmetic gives these problems.

    python bench/tool_math_eval.py CHECKPOINT [--single-turn MATH_RL_CHECKPOINT]
        [--problems 40] [--samples 4] [--engine vllm]
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
    parser.add_argument("checkpoint", help="a tool_math checkpoint (checkpoints/step_N)")
    parser.add_argument("--single-turn", help="a math_rl checkpoint, scored without tools")
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
    rows = [("base, with tools", results[0]), ("trained, with tools", results[1])]
    if args.single_turn:
        single = eval_settings(load_graph(ROOT / "graphs" / "math_rl.py", []))
        assert single is not None
        (result,) = evaluate_models(
            [args.single_turn],
            settings.data,  # tool_math's levels, split and seed: the same problems
            args.problems,
            args.samples,
            args.samples,
            single.temperature,
            single.max_tokens,
            args.engine,
            settings.seed,
            prompt_format=PromptFormat.model_validate(single.prompt_format),
        )
        rows.append(("math_rl trained, no tools", result))
    for row, result in rows:
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
