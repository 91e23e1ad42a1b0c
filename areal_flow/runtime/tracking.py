"""MLflow tracking of a graph run: one MLflow run per graph run.

Rules:
- Store: the spec's ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite database in
  the run folder (``sqlite:///<run>/mlflow.db``, artifacts in ``<run>/mlartifacts``) — no
  server needed. Telemetry is switched off before mlflow is imported.
- Params: the graph spec flattened to dotted paths, nodes by name (``nodes.gen.sampling.
  temperature``). Artifacts: the spec (``graph.json``), the graph drawing, the sample-rollout
  tables the trainer writes, the run summary (its totals also as ``summary/...`` metrics: the
  final lineage's steps and trajectories, and the steps a resume redid); the final checkpoint
  is recorded by path (tag ``checkpoint``), not copied.
- Metrics, per trainer step (MLflow ``step`` = optimizer step): everything in the trainer's
  step log (reward, the reward's named metrics ``reward/<name>``, loss, clip fraction,
  importance weights, entropy, version lag, training tokens/s, the time publishing blocked the
  step) plus, sampled from heartbeats when that step is seen, generation tokens/s, queue
  depths per edge, the staleness gate's counters and lag histogram, and the weight path's
  latencies (trainer: snapshot → file ready; publisher: file ready → forwarded; generators:
  file ready → active, the slowest replica).
- Run name: the ``--set`` overrides shortened (``steps=3 max_lag=0``; the run folder's name when
  there are none), so runs of one graph read apart in ``mlflow ui``; the full list is the tag
  ``overrides``. Held-out points scored during training (``metrics/eval.jsonl``) are logged as
  ``eval/...`` at their step and wall time. System metrics per node: CPU percent and resident
  memory of its replicas' processes and their children (psutil), ``system/<node>/...``.
- The final checkpoint is logged as an MLflow model (transformers flavour, artifact ``model``)
  unless ``tracking.log_model`` is false: ``mlflow.transformers.load_model("runs:/<id>/model")``.
- MLflow never slows the driver: calls run in one background thread fed by a queue; a failing
  tracking store is logged once and tracking turns off, the run goes on.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from areal_flow.spec import Graph
from areal_flow.train.steplog import read_steps, samples_dir
from areal_flow.web.runfiles import JsonlTail, eval_path

if TYPE_CHECKING:
    from areal_flow.runtime.driver import Driver, RunResult

log = logging.getLogger(__name__)

PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a param value
RUN_NAME_LIMIT = 80
#: Heartbeat gauges of the weight path, logged per step (seconds).
LATENCIES = ("publish_ready_s", "publish_to_forward_s", "publish_to_active_s")


def tracking_uri(graph: Graph, run_dir: Path) -> str:
    """Where this run is tracked (see the module rules)."""
    return (
        graph.tracking.uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{run_dir.resolve() / 'mlflow.db'}"
    )


def run_name(overrides: list[str], default: str) -> str:
    """``nodes.trainer.steps=3`` and ``staleness.max_lag=0`` → ``steps=3 max_lag=0`` (paths by
    their last part, repeats once)."""
    parts: list[str] = []
    for item in overrides:
        path, _, value = item.partition("=")
        if "/" in value:  # a path: its last part says enough
            value = Path(value).name
        part = f"{path.rsplit('.', 1)[-1]}={value}"
        if len(" ".join([*parts, part])) > RUN_NAME_LIMIT:
            break  # whole parts only; the tag 'overrides' has them all
        if part not in parts:
            parts.append(part)
    return " ".join(parts) or default


def flatten_spec(graph: Graph) -> dict[str, str]:
    """The spec as ``dotted.path → value`` with nodes keyed by name."""
    data = graph.model_dump(mode="json")
    data["nodes"] = {node.pop("name"): node for node in data["nodes"]}
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            flat[prefix] = str(value)[:PARAM_VALUE_LIMIT]

    walk("", data)
    return flat


class RunTracker:
    """Feeds one MLflow run from the driver's updates; call ``finish`` at the end."""

    def __init__(
        self,
        graph: Graph,
        run_dir: Path,
        resumed: bool = False,
        overrides: list[str] | None = None,
    ) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("DO_NOT_TRACK", "1")
        self.graph = graph
        self.run_dir = run_dir
        self.uri = tracking_uri(graph, run_dir)
        self.resumed = resumed
        self.overrides = list(overrides or [])
        self.run_id: str | None = None
        self.steps_logged = 0
        self._evals = JsonlTail(eval_path(run_dir))
        if resumed and self._evals.path.exists():  # the points before the resume are logged
            self._evals.offset = self._evals.path.stat().st_size
        self.usage = NodeUsage()
        self.samples_logged: set[str] = set()
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="mlflow", daemon=True)
        self._broken = False
        self._thread.start()
        # A resumed run must know which steps MLflow already has before the driver's first
        # update, so its start is waited for; a fresh run's start overlaps the replicas' setup.
        done = threading.Event()
        self._submit(lambda: _then(self._start, done.set))
        if resumed:
            done.wait(timeout=60)

    # -- driver side (cheap; never blocks on MLflow) ---------------------------------------

    def __call__(self, driver: Driver) -> None:
        """Queue the trainer's new steps, with the heartbeat metrics of this moment."""
        steps = read_steps(self.run_dir)
        if len(steps) <= self.steps_logged:
            return
        fresh, self.steps_logged = steps[self.steps_logged :], len(steps)
        system = {**system_metrics(driver), **self.usage.sample(driver)}
        evals = self._evals.read()
        self._submit(lambda: self._log_steps(fresh, system))
        if evals:
            self._submit(lambda: self._log_steps(evals, {}, prefix="eval/"))
        self._submit(self._log_new_samples)

    def finish(self, result: RunResult, summary: Path | None = None) -> None:
        """Log what is left, the summary and the final checkpoint's path; close the run."""
        steps = read_steps(self.run_dir)
        fresh, self.steps_logged = steps[self.steps_logged :], len(steps)
        if fresh:
            self._submit(lambda: self._log_steps(fresh, {}))
        evals = self._evals.read()
        if evals:
            self._submit(lambda: self._log_steps(evals, {}, prefix="eval/"))
        self._submit(self._log_new_samples)
        self._submit(lambda: self._end(result, summary))
        self._jobs.put(None)
        self._thread.join(timeout=120)

    def abort(self, reason: str) -> None:
        """The run never got going (or the driver raised): close the MLflow run as failed."""
        self._submit(lambda: self._fail(reason))
        self._jobs.put(None)
        self._thread.join(timeout=60)

    @property
    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {self.uri}"

    # -- MLflow thread ---------------------------------------------------------------------

    def _submit(self, job: Callable[[], None]) -> None:
        if not self._broken:
            self._jobs.put(job)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._broken:
                continue
            try:
                job()
            except Exception as err:  # tracking must never take the run down
                self._broken = True
                log.warning("MLflow tracking at %s failed, tracking off: %s", self.uri, err)

    def _start(self) -> None:
        import mlflow
        from mlflow import MlflowClient

        self.client = MlflowClient(self.uri)
        name = self.graph.tracking.experiment or self.graph.name
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            local = self.uri.startswith("sqlite:///") and str(self.run_dir.resolve()) in self.uri
            artifacts = (self.run_dir.resolve() / "mlartifacts").as_uri() if local else None
            experiment_id = self.client.create_experiment(name, artifact_location=artifacts)
        else:
            experiment_id = experiment.experiment_id
        if self.resumed and self._continue(experiment_id):
            return
        tags = {"run_dir": str(self.run_dir), "overrides": " ".join(self.overrides)[:5000]}
        name = run_name(self.overrides, self.run_dir.name)
        run = self.client.create_run(experiment_id, run_name=name, tags=tags)
        self.run_id = run.info.run_id
        params = [mlflow.entities.Param(k, v) for k, v in flatten_spec(self.graph).items()]
        for start in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        spec = self.run_dir / "graph.json"
        if spec.exists():
            self.client.log_artifact(self.run_id, str(spec))
        self._log_drawing()

    def _continue(self, experiment_id: str) -> bool:
        """Reopen the MLflow run of this run folder; skip the steps it already has."""
        found = self.client.search_runs(
            [experiment_id], f"tags.run_dir = '{self.run_dir}'", max_results=1
        )
        if not found:
            return False
        self.run_id = found[0].info.run_id
        self.client.update_run(self.run_id, status="RUNNING")
        self.client.set_tag(self.run_id, "resumed", "true")
        history = self.client.get_metric_history(self.run_id, "loss")
        last = max((m.step for m in history), default=0)
        records = read_steps(self.run_dir)
        done = [i for i, r in enumerate(records) if int(r["step"]) == last]
        self.steps_logged = done[-1] + 1 if done else 0
        return True

    def _fail(self, reason: str) -> None:
        if self.run_id is not None:
            self.client.set_tag(self.run_id, "failure", reason[:5000])
            self.client.set_terminated(self.run_id, "FAILED")

    def _log_drawing(self) -> None:
        from areal_flow.graph import Machine, build
        from areal_flow.viz import draw

        assert self.run_id is not None
        path = draw(build(self.graph, Machine.detect()), self.run_dir / "graph.png")
        self.client.log_artifact(self.run_id, str(path))

    def _log_steps(
        self, steps: list[dict[str, Any]], system: dict[str, float], prefix: str = ""
    ) -> None:
        import mlflow

        assert self.run_id is not None
        metrics: list[Any] = []
        for record in steps:
            step = int(record["step"])
            millis = int(float(record.get("time", 0)) * 1000)
            values = {k: v for k, v in record.items() if k not in ("step", "time")}
            if record is steps[-1]:
                values.update(system)
            metrics.extend(
                mlflow.entities.Metric(_metric_name(k), float(v), millis, step)
                for k, v in values.items()
                if isinstance(v, int | float) and k.startswith(prefix)
            )
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def _log_new_samples(self) -> None:
        assert self.run_id is not None
        folder = samples_dir(self.run_dir)
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("step_*.jsonl")):
            if path.name not in self.samples_logged:
                self.client.log_artifact(self.run_id, str(path), "samples")
                self.samples_logged.add(path.name)

    def _end(self, result: RunResult, summary: Path | None) -> None:
        assert self.run_id is not None
        checkpoint = latest_checkpoint(self.run_dir)
        if checkpoint is not None:
            self.client.set_tag(self.run_id, "checkpoint", str(checkpoint))
            if self.graph.tracking.log_model:
                self._log_model(checkpoint)
        self.client.set_tag(self.run_id, "status", result.status)
        self.client.log_metric(self.run_id, "wall_s", result.wall_s)
        if summary is not None and summary.exists():
            self.client.log_artifact(self.run_id, str(summary))
            data = json.loads(summary.read_text())
            for name, value in {**eval_metrics(data), **summary_totals(data)}.items():
                self.client.log_metric(self.run_id, _metric_name(name), value)
        status = {"completed": "FINISHED", "interrupted": "KILLED"}.get(result.status, "FAILED")
        self.client.set_terminated(self.run_id, status)

    def _log_model(self, checkpoint: Path) -> None:
        """The checkpoint as an MLflow transformers model under the artifact path ``model``."""
        import tempfile

        assert self.run_id is not None
        with tempfile.TemporaryDirectory(prefix="areal-flow-model-") as tmp:
            save_transformers_model(checkpoint, Path(tmp) / "model")
            self.client.log_artifacts(self.run_id, str(Path(tmp) / "model"), "model")
        self.client.set_tag(self.run_id, "model", f"runs:/{self.run_id}/model")


def save_transformers_model(checkpoint: Path, out: Path) -> Path:
    """An HF checkpoint folder saved as an MLflow transformers model (text generation).

    The model is handed over loaded: MLflow's own path for a local checkpoint does not work
    with the installed transformers. Requirements are given, not inferred (inference imports
    torchvision, which this project does not install)."""
    import mlflow.transformers
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    mlflow.transformers.save_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        path=str(out),
        task="text-generation",
        pip_requirements=[
            f"transformers=={transformers.__version__}",
            f"torch=={torch.__version__.split('+')[0]}",
        ],
    )
    return out


class NodeUsage:
    """CPU percent and resident memory per node: its replicas' processes and their children.

    Replicas on other hosts (Ray) have PIDs this host cannot see: they are skipped. CPU percent
    is measured between two samples of the same process, so a node's first sample reads 0."""

    def __init__(self) -> None:
        self._processes: dict[int, Any] = {}

    def sample(self, driver: Driver) -> dict[str, float]:
        import psutil

        out: dict[str, float] = {}
        for replica in driver.replicas.values():
            if replica.pid is None:
                continue
            try:
                root = psutil.Process(replica.pid)
                members = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            cpu = rss = 0.0
            for process in members:
                known = self._processes.setdefault(process.pid, process)
                try:
                    cpu += known.cpu_percent(None)
                    rss += known.memory_info().rss / 2**20
                except psutil.Error:
                    continue
            node = replica.plan.node
            out[f"system/{node}/cpu_percent"] = out.get(f"system/{node}/cpu_percent", 0.0) + cpu
            out[f"system/{node}/rss_mb"] = out.get(f"system/{node}/rss_mb", 0.0) + rss
        return out


def _then(first: Callable[[], None], after: Callable[[], None]) -> None:
    try:
        first()
    finally:
        after()


def system_metrics(driver: Driver) -> dict[str, float]:
    """Node throughput, queue depths and staleness counters from the latest heartbeats."""
    from areal_flow.graph import resolved_edges

    out: dict[str, float] = {}
    for replica in driver.replicas.values():
        node = replica.plan.node
        if "gen_tokens_per_s" in replica.metrics:  # a node's rate: the sum of its replicas'
            key = f"{node}/gen_tokens_per_s"
            out[key] = out.get(key, 0.0) + replica.metrics["gen_tokens_per_s"]
        for name in LATENCIES:  # a node's latency: its slowest replica's
            if name in replica.metrics:
                key = f"{node}/{name}"
                out[key] = max(out.get(key, 0.0), replica.metrics[name])
        for key, value in replica.metrics.items():
            if key.startswith("edge.") and key.endswith(".depth"):
                out[key] = out.get(key, 0.0) + value
    labels = {
        f"edge.{e.index}.depth": e.label.replace(" -> ", " to ") for e in resolved_edges(driver.g)
    }
    out = {f"queue/{labels[k]}" if k in labels else k: v for k, v in out.items()}
    if driver.gate is not None:
        out.update({f"staleness/{k}": v for k, v in driver.gate.metrics().items()})
    return out


def eval_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """``eval/<base|final>/<metric>/<level>`` from a run summary's held-out scores."""
    out = {}
    for which in ("base", "final"):
        for metric, levels in (summary.get(which) or {}).items():
            for level, value in levels.items():
                out[f"eval/{which}/{metric}/{level}"] = float(value)
    return out


def summary_totals(summary: dict[str, Any]) -> dict[str, float]:
    """``summary/<total>``: the final lineage's steps and trajectories, what a resume redid,
    and the seconds to the first optimizer step (``summary/first_step_s``)."""
    keys = ("steps", "trajectories", "redone_steps", "redone_trajectories")
    totals = {f"summary/{key}": float(summary[key]) for key in keys if key in summary}
    first = summary.get("startup_s", {}).get("first optimizer step")
    if first is not None:
        totals["summary/first_step_s"] = float(first)
    return totals


def _metric_name(key: str) -> str:
    """MLflow metric names allow letters, digits, ``_ - . / `` and spaces."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The run's latest checkpoint folder, if it wrote one."""
    from areal_flow.train.checkpoint import resolve_checkpoint

    try:
        return resolve_checkpoint(run_dir)
    except FileNotFoundError:
        return None
