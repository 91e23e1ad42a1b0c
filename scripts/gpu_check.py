"""The GPU check: the gpu-marked tests, then a shortened ``graphs/math_rl.py`` on CUDA, and one
table. Run it through ``scripts/gpu_check.sh`` on a machine with a CUDA GPU (after
``bash scripts/setup.sh gpu``); it is sized to finish in under 8 minutes.

Steps:
1. ``pytest -m gpu``: the vLLM CUDA engine (log-probs, interrupts, weight updates), a trainer
   step on CUDA in bf16, and weights published from CUDA memory becoming vLLM's policy.
2. ``areal-flow run graphs/math_rl.py`` shortened (``--steps`` optimizer steps, a smaller
   held-out set): the vLLM CUDA generator and the trainer on the GPU — sharing it
   (``gpus: 0.5`` each, vLLM held to ``--gpu-memory``) on a one-GPU machine, one GPU each
   when there are two or more.
3. One table from the run folder: tokens/s per node, publish → active (slowest generator
   replica), steps/s, held-out pass@1 before and after, and the times; also written to
   ``gpu_check.json`` in the run folder.

``--cpu-dry-run`` runs the same pipeline on this machine's CPU with the tiny random model and
the hf engine: the gpu tests are only collected (they skip without CUDA), the graph runs
``DRY_RUN_STEPS`` steps, and the table is built the same way (tests/e2e/test_gpu_check.py runs
it).

Exit status: 0 when the tests passed and the run completed with every figure of the table; 1
otherwise; 2 when there is no CUDA GPU and no ``--cpu-dry-run``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
GRAPH = ROOT / "graphs" / "math_rl.py"
BUDGET_S = 8 * 60
console = Console(width=120)


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


#: The dry run's steps: at math_rl's η = 2 the gate admits 3 steps' trajectories on the initial
#: weights, so step 4's data exist only once the generator has loaded version 1, and the table's
#: publish → active always has a figure. With 2 steps the run could end before that load (on the
#: tiny model a step takes ~0.2 s): the figure was missing in some runs.
DRY_RUN_STEPS = 4


def run_tests(dry_run: bool, basetemp: Path) -> tuple[bool, str]:
    """The gpu-marked tests (only collected in a dry run); (passed, pytest's last line)."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", f"--basetemp={basetemp}"]
    if dry_run:
        command.append("--collect-only")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    last = lines[-1] if lines else done.stderr.strip().splitlines()[-1]
    if done.returncode != 0:
        console.print(done.stdout[-4000:], done.stderr[-2000:], markup=False)
    return done.returncode == 0, last


def overrides(gpus: int, steps: int, gpu_memory: float, tiny: Path | None) -> list[str]:
    """``--set`` items that shorten math_rl and place it (CUDA, or the CPU dry run)."""
    if tiny is not None:  # the dry run: tiny model, hf engine, a small held-out set
        from areal_flow.testing import tiny_overrides

        return tiny_overrides(
            tiny,
            **{
                "nodes.trainer.steps": steps,
                "evaluation.problems": 8,
                "evaluation.samples": 2,
                "evaluation.k": 2,
                "evaluation.max_tokens": 16,
            },
        )
    share = 1 if gpus >= 2 else 0.5  # one GPU each, or both on the only one
    return [
        f"nodes.gen.resources.gpus={share}",
        f"nodes.trainer.resources.gpus={share}",
        f"nodes.gen.gpu_memory={gpu_memory}",
        # math_rl's eager engine is a CPU choice; a GPU wants CUDA graphs
        "nodes.gen.eager=false",
        f"nodes.trainer.steps={steps}",
        "evaluation.problems=50",
        "evaluation.samples=4",
    ]


def run_graph(settings: list[str], run_dir: Path) -> int:
    command = [sys.executable, "-m", "areal_flow.cli", "run", str(GRAPH), "-q"]
    command += ["--run-dir", str(run_dir)]
    for item in settings:
        command += ["--set", item]
    console.print("$ " + " ".join(command), markup=False)
    return subprocess.run(command, cwd=ROOT).returncode


def figures(run_dir: Path) -> dict[str, Any]:
    """The table's figures from a finished run folder (summary.json, metrics/steps.jsonl)."""
    from areal_flow.train.steplog import read_steps

    summary = json.loads((run_dir / "summary.json").read_text())
    steps = read_steps(run_dir)
    times = [float(s["time"]) for s in steps]
    out: dict[str, Any] = {
        "status": summary["status"],
        "steps": len(steps),
        "run_wall_s": summary["wall_s"],
        "tokens_per_s": summary["tokens_per_s"],
        # From the first step's end to the last's: the steady rate, not start-up.
        "steps_per_s": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None,
        "train_s_per_step": sum(float(s.get("step_s", 0.0)) for s in steps) / max(len(steps), 1),
        "publish_to_active_max_s": max(
            (v for k, v in summary["weight_path_s"].items() if "publish_to_active" in k),
            default=None,
        ),
        "publish_block_mean_s": summary["weight_path_s"].get("publish_block_s/mean"),
    }
    for when in ("base", "final"):
        scores = summary.get(when) or {}
        out[f"held_out_{when}_pass1"] = scores.get("pass@1", {}).get("all")
    return out


def table(found: dict[str, Any], title: str) -> Table:
    def num(value: Any, fmt: str) -> str:
        return "missing" if value is None else format(value, fmt)

    out = Table(title=title, show_header=False)
    out.add_column("figure")
    out.add_column("value", justify="right")
    out.add_row("gpu tests", found["tests"])
    for node, rate in sorted(found["tokens_per_s"].items()):
        out.add_row(f"tokens/s {node}", num(rate, ",.0f"))
    active, blocked = found["publish_to_active_max_s"], found["publish_block_mean_s"]
    out.add_row("publish → active (slowest replica)", num(active, ".3f") + " s")
    out.add_row("trainer blocked by publishing (mean)", num(blocked, ".3f") + " s")
    out.add_row("optimizer steps", str(found["steps"]))
    out.add_row("steps/s (steady)", num(found["steps_per_s"], ".3f"))
    out.add_row("train time per step", num(found["train_s_per_step"], ".2f") + " s")
    out.add_row("held-out pass@1 before", num(found["held_out_base_pass1"], ".3f"))
    out.add_row("held-out pass@1 after", num(found["held_out_final_pass1"], ".3f"))
    out.add_row("run wall time", num(found["run_wall_s"], ".0f") + " s")
    out.add_row("whole check", num(found["check_s"], ".0f") + " s")
    return out


def complete(found: dict[str, Any]) -> bool:
    keys = ["steps_per_s", "publish_to_active_max_s", "held_out_base_pass1"]
    keys.append("held_out_final_pass1")
    gen_rate = any("gen" in node for node in found["tokens_per_s"])
    return found["status"] == "completed" and gen_rate and all(found[k] is not None for k in keys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="CPU, tiny model, hf engine.")
    parser.add_argument("--steps", type=int, default=None, help="Optimizer steps (10; dry 4).")
    parser.add_argument("--gpu-memory", type=float, default=0.3, help="vLLM's share on CUDA.")
    parser.add_argument("--run-dir", type=Path, default=None, help="Default: runs/gpu_check-…")
    parser.add_argument("--skip-tests", action="store_true", help="Only the run and the table.")
    args = parser.parse_args(argv)
    began = time.monotonic()
    gpus = 0 if args.cpu_dry_run else gpu_count()
    if not gpus and not args.cpu_dry_run:
        console.print("no CUDA GPU here (torch.cuda.is_available() is False); on a GPU machine "
                      "run `bash scripts/setup.sh gpu` first, or pass --cpu-dry-run")  # fmt: skip
        return 2
    steps = args.steps or (DRY_RUN_STEPS if args.cpu_dry_run else 10)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        work = Path(scratch)
        tests_ok, tests_line = (True, "skipped (--skip-tests)")
        if not args.skip_tests:
            tests_ok, tests_line = run_tests(args.cpu_dry_run, work / "pytest")
            console.print(f"gpu tests: {tests_line}", markup=False)
        tiny = None
        if args.cpu_dry_run:
            from areal_flow.models import make_tiny_model, prepare_smollm2

            tiny = make_tiny_model(work / "tiny", tokenizer_from=prepare_smollm2())
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = args.run_dir or ROOT / "runs" / f"gpu_check-{stamp}"
        code = run_graph(overrides(gpus, steps, args.gpu_memory, tiny), run_dir)
        if not (run_dir / "summary.json").exists():
            console.print(f"the run left no summary (exit {code}): see {run_dir}/logs")
            return 1
        found = {**figures(run_dir), "tests": tests_line, "check_s": time.monotonic() - began}
        found["device"] = "cpu (dry run)" if args.cpu_dry_run else f"{gpus} CUDA GPU(s)"
        (run_dir / "gpu_check.json").write_text(json.dumps(found, indent=2))
        title = f"GPU check on {found['device']}, math_rl shortened to {steps} steps"
        console.print(table(found, title))
        if not args.cpu_dry_run and found["check_s"] > BUDGET_S:
            console.print(f"over the {BUDGET_S // 60}-minute budget: lower --steps")
        ok = tests_ok and code == 0 and complete(found)
        console.print("gpu check: " + ("passed" if ok else "FAILED"))
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
