"""The end of a run: held-out evaluation of the initial and final policy, and the summary.

Rules:
- Evaluation runs only for a graph with an ``evaluation`` section, a trainer and a completed
  run with a checkpoint. Unset settings follow the graph (see ``Evaluation``): the prompt
  source's task and levels on the held-out split, the generator's temperature, max tokens and
  engine — the policy is scored the way it was trained, with the training verifier (strict).
- The initial model's score depends only on the model, the settings and the verifier's rules, so
  it is cached in ``~/.cache/areal-flow/evals`` (``$AREAL_FLOW_EVAL_CACHE``) and shown as
  cached; the final checkpoint is always scored fresh. Both are scored with one engine
  (weights loaded in place).
- ``summary.json`` in the run folder holds everything the table shows.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from areal_flow.data.prompting import PromptFormat
from areal_flow.episodes.runner import EpisodePlan
from areal_flow.roles import GeneratorSpec, SourceSpec, TrainerSpec
from areal_flow.spec import Graph

if TYPE_CHECKING:
    from areal_flow.eval_progress import EvalProgress
    from areal_flow.runtime.driver import RunResult

ALL = "all"
#: A generator's tokens per second counted only while it had episodes running or loaded weights.
BUSY = "{node} (while generating)"


@dataclass(frozen=True)
class EvalSettings:
    """The resolved evaluation of one graph."""

    model: str
    data: str
    problems: int
    samples: int
    k: int
    temperature: float
    max_tokens: int
    engine: str
    seed: int
    prompt_format: dict[str, Any] = field(default_factory=dict)  # PromptFormat fields
    episode: EpisodePlan = field(default_factory=EpisodePlan)
    #: the generator's engine settings (``GeneratorSpec.engine_settings``): how the engine
    #: runs, not what it scores, so only a dtype other than float32 is part of the cache key
    engine_settings: dict[str, Any] = field(default_factory=dict)

    def cache_key(self) -> str:
        from areal_flow.models import prepare_model
        from areal_flow.reward import RewardConfig

        folder = prepare_model(self.model)
        weights = sorted(folder.glob("*.safetensors"))
        stamp = [(p.name, p.stat().st_size) for p in weights]
        # The verifier's rules are part of the score: a change to them must miss the cache.
        verifier = RewardConfig().model_dump()
        scored = {k: v for k, v in asdict(self).items() if k != "engine_settings"}
        dtype = self.engine_settings.get("dtype", "float32")
        if dtype != "float32":  # a lower precision changes the scores (float32: keys as before)
            scored["dtype"] = dtype
        text = json.dumps([scored, str(folder), stamp, verifier], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass
class Summary:
    """What the run did and how much better the policy got."""

    status: str
    wall_s: float
    steps: int  # optimizer steps of the final policy's lineage
    trajectories: int  # trajectories those steps trained
    version: int
    tokens_per_s: dict[str, float]
    checkpoint: str | None
    eval_settings: dict[str, Any] | None = None
    base: dict[str, dict[str, float]] | None = None  # metric → level → value
    final: dict[str, dict[str, float]] | None = None
    base_cached: bool = False
    redone_steps: int = 0  # steps done again after a resume rolled them back
    redone_trajectories: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    weight_path_s: dict[str, float] = field(default_factory=dict)  # see weight_path()
    #: the reward and its named metrics (``reward/<name>``), mean of the last steps
    training: dict[str, float] = field(default_factory=dict)
    startup_s: dict[str, float] = field(default_factory=dict)  # see startup()
    #: lending placement: seconds the borrower (the trainer) computed on cores lent to it
    borrowed_s: dict[str, float] = field(default_factory=dict)
    eval_s: float | None = None  # the end-of-run evaluation, start to scores

    def save(self, run_dir: Path) -> Path:
        path = run_dir / "summary.json"
        path.write_text(json.dumps(asdict(self), indent=2))
        return path


def eval_settings(graph: Graph) -> EvalSettings | None:
    """The evaluation ``graph`` asks for, its gaps filled from its nodes; None if none."""
    spec = graph.evaluation
    trainer = next((n for n in graph.nodes if isinstance(n, TrainerSpec)), None)
    if spec is None or trainer is None:
        return None
    generator = next((n for n in graph.nodes if isinstance(n, GeneratorSpec)), None)
    sources = [n for n in graph.nodes if isinstance(n, SourceSpec)]
    data = spec.data or next((d for s in sources if (d := s.held_out_data())), None)
    if data is None:
        raise ValueError(
            "evaluation.data: set it (a dataset file or 'arithmetic'); it can only be derived "
            "from a source with a held-out split (the prompt source on the arithmetic task)"
        )
    sampling = generator.sampling if generator is not None else None
    prompt_format = next((f for s in sources if (f := s.prompt_format()) is not None), None)
    engine = str(_pick(spec.engine, generator and generator.eval_engine(), "vllm"))
    return EvalSettings(
        model=trainer.model,
        data=data,
        problems=spec.problems,
        samples=spec.samples,
        k=spec.k,
        temperature=_pick(spec.temperature, sampling and sampling.temperature, 0.7),
        max_tokens=int(_pick(spec.max_tokens, sampling and sampling.max_tokens, 256)),
        engine=engine,
        seed=graph.seed,
        prompt_format=(prompt_format or PromptFormat()).model_dump(),
        episode=EpisodePlan.of(generator) if generator is not None else EpisodePlan(),
        engine_settings=_same_engine_settings(generator, engine),
    )


def _same_engine_settings(generator: GeneratorSpec | None, engine: str) -> dict[str, Any]:
    """The generator's engine settings when the evaluation runs the generator's engine."""
    if generator is None or generator.eval_engine() != engine:
        return {}
    return generator.engine_settings()


def _pick(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def eval_cache_dir() -> Path:
    env = os.environ.get("AREAL_FLOW_EVAL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "areal-flow" / "evals"


def evaluate_with(
    settings: EvalSettings,
    models: list[str],
    progress: EvalProgress | None = None,
    engine_settings: dict[str, Any] | None = None,
) -> list[Any]:
    """``evaluate_models`` of ``models`` with every other argument from ``settings``
    (``engine_settings``: these instead of the settings' own)."""
    from areal_flow.evaluate import evaluate_models

    return evaluate_models(
        models,
        settings.data,
        settings.problems,
        settings.samples,
        settings.k,
        settings.temperature,
        settings.max_tokens,
        settings.engine,  # type: ignore[arg-type]
        settings.seed,
        prompt_format=PromptFormat.model_validate(settings.prompt_format),
        episode=settings.episode,
        engine_settings=settings.engine_settings if engine_settings is None else engine_settings,
        progress=progress,
    )


def evaluate_run(
    settings: EvalSettings,
    checkpoint: Path,
    base: bool = True,
    progress: EvalProgress | None = None,
) -> tuple[dict[str, Any] | None, dict[str, Any], bool]:
    """(base scores or None, final scores, base came from the cache)."""
    cached_path = eval_cache_dir() / f"{settings.cache_key()}.json"
    base_scores = json.loads(cached_path.read_text()) if base and cached_path.exists() else None
    models = [str(checkpoint)] if base_scores is not None or not base else []
    if base and base_scores is None:
        models = [settings.model, str(checkpoint)]
    results = evaluate_with(settings, models, progress)
    scores = [_scores(r) for r in results]
    final = scores[-1]
    if base and base_scores is None:
        base_scores = scores[0]
        cached_path.parent.mkdir(parents=True, exist_ok=True)
        cached_path.write_text(json.dumps(base_scores))
        return base_scores, final, False
    return base_scores, final, base_scores is not None


def _scores(result: Any) -> dict[str, dict[str, float]]:
    scores = {
        "pass@1": dict(result.pass1),
        f"pass@{result.k}": dict(result.pass_k),
        "format": dict(result.format_rate),
        "problems": {k: float(v) for k, v in result.problems.items()},
    }
    for name, value in result.episode_metrics.items():  # tool calls, turns: over all samples
        scores[f"episode/{name}"] = {ALL: value}
    return scores


def build_summary(
    result: RunResult, checkpoint: Path | None, launched_at: float | None = None
) -> Summary:
    """Totals from the step log and the replicas' final metrics (evaluation added later).
    ``launched_at``: when the command started (epoch seconds), the origin of ``startup_s``."""
    from areal_flow.train.steplog import lineage, read_steps

    records = read_steps(result.run_dir)
    steps, redone = lineage(records)
    rates: dict[str, float] = {}
    for key, values in result.metrics.items():
        node = key.rsplit("/", 1)[0]
        for metric, label in (("gen_tokens_per_s", node), ("gen_busy_tokens_per_s", BUSY)):
            if metric in values:
                name = label.format(node=node)
                rates[name] = rates.get(name, 0.0) + float(values[metric])
    borrowed: dict[str, float] = {}
    if any("borrowed_s" in s for s in steps):
        borrowed["trainer"] = sum(float(s.get("borrowed_s", 0.0)) for s in steps)
    train_s = sum(float(s.get("step_s", 0.0)) for s in steps)
    if train_s > 0:
        rates["trainer (training)"] = sum(float(s.get("tokens", 0.0)) for s in steps) / train_s
    return Summary(
        status=result.status,
        wall_s=result.wall_s,
        steps=len(steps),
        trajectories=_trajectories(steps),
        version=result.version,
        tokens_per_s=rates,
        checkpoint=str(checkpoint) if checkpoint else None,
        redone_steps=len(redone),
        redone_trajectories=_trajectories(redone),
        weight_path_s=weight_path(steps, result.metrics),
        training=final_rewards(steps),
        startup_s=startup(result, records, launched_at),
        borrowed_s=borrowed,
    )


FIRST_STEP = "first optimizer step"


def startup(
    result: RunResult, records: list[dict[str, Any]], launched_at: float | None = None
) -> dict[str, float]:
    """Where start-up went, in seconds: ``setup/<node>`` (launch → ready, the slowest
    replica), ``all nodes ready`` and ``first optimizer step``, both from ``launched_at`` (the
    command's start; the driver's start without it). A resumed run counts its own first step,
    not the earlier run's records."""
    origin = launched_at if launched_at is not None else result.started_at
    lead = result.started_at - origin  # the command's own start: imports, loading the graph
    out: dict[str, float] = {}
    if launched_at is not None:
        out["command → driver"] = lead
    for key, seconds in sorted(result.setup_s.items()):
        name = f"setup/{key.rsplit('/', 1)[0]}"
        out[name] = max(out.get(name, 0.0), seconds)
    if result.all_ready_s is not None:
        out["all nodes ready"] = lead + result.all_ready_s
    times = [float(r["time"]) for r in records if "time" in r]
    mine = [t for t in times if t >= result.started_at]
    if mine:
        out[FIRST_STEP] = mine[0] - origin
    return out


def final_rewards(steps: list[dict[str, Any]], last: int = 5) -> dict[str, float]:
    """The reward and every named reward metric, averaged over the last ``last`` steps: what
    the policy earned by the end, whatever the reward function reports."""
    tail = steps[-last:]
    names = sorted({k for s in tail for k in s if k == "reward_mean" or k.startswith("reward/")})
    out = {}
    for name in names:
        values = [float(s[name]) for s in tail if name in s]
        out[name] = sum(values) / len(values)
    return out


def _trajectories(steps: list[dict[str, Any]]) -> int:
    return int(sum(float(s.get("sequences", 0.0)) for s in steps))


def weight_path(
    steps: list[dict[str, Any]], metrics: dict[str, dict[str, float]]
) -> dict[str, float]:
    """How long publishing blocked the trainer per step (mean, max) and, per generator node,
    the slowest file ready → active of any replica over the run."""
    out: dict[str, float] = {}
    blocked = [float(s["publish_block_s"]) for s in steps if "publish_block_s" in s]
    if blocked:
        out["publish_block_s/mean"] = sum(blocked) / len(blocked)
        out["publish_block_s/max"] = max(blocked)
    for key, values in metrics.items():
        if "publish_to_active_max_s" in values:
            name = f"{key.rsplit('/', 1)[0]}/publish_to_active_s/max"
            out[name] = max(out.get(name, 0.0), float(values["publish_to_active_max_s"]))
    return out


def _cell(values: dict[str, float], level: str) -> str:
    return f"{values[level]:.3f}" if level in values else ""


def summary_table(summary: Summary) -> Table:
    """Base vs final accuracy per level, then the run's totals."""
    table = Table(title="run summary", show_edge=False)
    table.add_column("")
    base, final = summary.base or {}, summary.final or {}
    metrics = [m for m in final if m != "problems"]
    levels = sorted(final.get("pass@1", {}), key=lambda lvl: (lvl != ALL, lvl))
    for level in levels:
        table.add_column(level, justify="right")
    if final:
        count = final.get("problems", {})
        table.add_row("held-out problems", *[f"{count.get(lvl, 0):.0f}" for lvl in levels])
    for metric in metrics:
        before, after = base.get(metric, {}), final[metric]
        if base:
            tag = " (cached)" if summary.base_cached else ""
            table.add_row(f"base {metric}{tag}", *[_cell(before, lvl) for lvl in levels])
        table.add_row(f"final {metric}", *[_cell(after, lvl) for lvl in levels])
        if base:
            table.add_row(
                f"Δ {metric}",
                *[
                    f"{after[lvl] - before[lvl]:+.3f}" if lvl in after and lvl in before else ""
                    for lvl in levels
                ],
            )
    totals = Table(show_edge=False, show_header=False)
    totals.add_column("")
    totals.add_column("", justify="right")
    totals.add_row("status", summary.status)
    totals.add_row("wall time", f"{summary.wall_s:,.0f} s")
    totals.add_row("optimizer steps", str(summary.steps))
    totals.add_row("trajectories trained", str(summary.trajectories))
    if summary.redone_steps:
        totals.add_row(
            "redone after a resume",
            f"{summary.redone_steps} steps, {summary.redone_trajectories} trajectories",
        )
    totals.add_row("policy version", str(summary.version))
    if FIRST_STEP in summary.startup_s:
        ready = summary.startup_s.get("all nodes ready")
        detail = f" (nodes ready at {ready:,.0f} s)" if ready is not None else ""
        totals.add_row(
            "time to first optimizer step", f"{summary.startup_s[FIRST_STEP]:,.0f} s{detail}"
        )
    if summary.eval_s is not None:
        totals.add_row("held-out evaluation", f"{summary.eval_s:,.0f} s")
    for node, rate in summary.tokens_per_s.items():
        totals.add_row(f"{node} tokens/s", f"{rate:,.0f}")
    for node, seconds in summary.borrowed_s.items():
        totals.add_row(f"{node} on borrowed cores", f"{seconds:,.0f} s")
    for name, seconds in summary.weight_path_s.items():
        totals.add_row(name.replace("/", " "), f"{seconds * 1000:,.0f} ms")
    for name, value in summary.training.items():
        label = "reward" if name == "reward_mean" else name.removeprefix("reward/")
        totals.add_row(f"{label} (last steps)", f"{value:.3f}")
    totals.add_row("checkpoint", summary.checkpoint or "-")
    outer = Table.grid(padding=(1, 0))
    if final:
        outer.add_row(table)
    outer.add_row(totals)
    return outer
