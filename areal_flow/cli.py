"""The ``areal-flow`` command line.

Rules:
- A bad graph or a bad ``--set`` prints every problem (field path and fix) and exits 1, never a
  traceback. Exit 0 means the command did what it says.
- Only the public API is used here: loader, graph checks, drawing, and the runtime's entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from areal_flow.colocation import colocated_nodes
from areal_flow.graph import GraphInvalid, build, resolved_edges
from areal_flow.lending import lending_blockers
from areal_flow.loader import load_graph
from areal_flow.spec import Graph

app = typer.Typer(
    name="areal-flow",
    help="Fully asynchronous RL for LLM reasoning as a dataflow graph.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Off a terminal (CI logs, pipes) rich would wrap at 80 columns and cut the tables.
console = Console(width=None if sys.stdout.isatty() else 120)
# Error lines are never wrapped off a terminal: a path plus its message stays one greppable line.
errors = Console(
    stderr=True,
    width=None if sys.stderr.isatty() else 120,
    soft_wrap=not sys.stderr.isatty(),
)

GraphFile = Annotated[
    Path, typer.Argument(help="Graph file: .py (graph or build_graph()), .yaml or .json.")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a spec field: path.to.field=value (repeatable)."),
]


def _load(file: Path, overrides: list[str] | None) -> tuple[Graph, object]:
    try:
        graph = load_graph(file, overrides or [])
        return graph, build(graph)
    except GraphInvalid as err:
        _print_problems(str(file), err)
        raise typer.Exit(1) from None


def _print_problems(what: str, err: GraphInvalid) -> None:
    errors.print(f"[bold red]{what}: {len(err.problems)} problem(s)[/]")
    for problem in err.problems:
        errors.print(f"  [red]✗[/] [bold]{problem.where}[/]: {problem.message}", highlight=False)


@app.command()
def validate(file: GraphFile, set_: SetOption = None) -> None:
    """Check a graph file and print its nodes and edges."""
    graph, g = _load(file, set_)
    nodes = Table(title=f"graph {graph.name!r}: {len(graph.nodes)} nodes", title_justify="left")
    for column in ("node", "kind", "replicas", "cpus", "gpus", "inputs", "outputs"):
        nodes.add_column(column)
    shared = {n.name for n in colocated_nodes(graph)}
    for node in graph.nodes:
        nodes.add_row(
            node.name,
            node.kind,
            str(node.replicas),
            "all, taking turns" if node.name in shared else f"{node.resources.cpus:g}",
            f"{node.resources.gpus:g}",
            ", ".join(f"{n}:{p.record}" for n, p in node.inputs.items()) or "-",
            ", ".join(f"{n}:{p.record}" for n, p in node.outputs.items()) or "-",
        )
    edges = Table(title=f"{len(graph.edges)} edges", title_justify="left")
    for column in ("edge", "record", "capacity", "kind"):
        edges.add_column(column)
    for edge in resolved_edges(g):
        edges.add_row(
            edge.label, edge.record, str(edge.spec.capacity), "weights" if edge.weights else "data"
        )
    console.print(nodes)
    console.print(edges)
    eta = graph.staleness.max_lag
    _lending_note(graph)
    console.print(
        f"staleness η = {'∞' if eta is None else eta}, launcher = {graph.launcher}, "
        f"placement = {graph.placement}  [green]✓ valid[/]"
    )


def _lending_note(graph: Graph) -> None:
    """Say so when ``lending`` placement lends nothing in this graph (it is then placed as
    ``disaggregated``; areal_flow/lending.py)."""
    if blockers := lending_blockers(graph):
        console.print(
            f"[yellow]placement 'lending' lends nothing here ({'; '.join(blockers)}): the "
            "nodes are placed as under 'disaggregated'[/]",
            highlight=False,
        )


@app.command()
def viz(
    file: GraphFile,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output file: .svg, .png, .dot or .mmd.")
    ] = Path("graph.svg"),
    set_: SetOption = None,
) -> None:
    """Draw a graph (nodes coloured by role, weight edges dashed)."""
    from areal_flow.viz import FORMATS, draw

    if out.suffix not in FORMATS:
        errors.print(f"[red]✗[/] --out {out}: use one of {', '.join(FORMATS)}")
        raise typer.Exit(1)
    _, g = _load(file, set_)
    console.print(f"wrote {draw(g, out)}")


@app.command()
def run(
    file: GraphFile,
    set_: SetOption = None,
    run_dir: Annotated[
        Path | None,
        typer.Option("--run-dir", help="Run folder (default: a new one under run_dir)."),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="A plain progress line every 10 s (CI logs).")
    ] = False,
    launcher: Annotated[
        str | None,
        typer.Option("--launcher", help="'local' or 'ray' (default: the graph's launcher)."),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option("--address", help="Ray cluster to join (implies --launcher ray)."),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Continue the stopped or crashed run in this folder from its latest checkpoint.",
        ),
    ] = None,
    no_web: Annotated[
        bool, typer.Option("--no-web", help="Do not serve the live web view.")
    ] = False,
) -> None:
    """Run a graph (local processes or Ray actors) and show it live (terminal and web page)."""
    from areal_flow.runtime import new_run_dir, run_graph
    from areal_flow.runtime.live import LiveView, QuietView

    overrides = [*(set_ or []), *_launcher_overrides(launcher, address)]
    graph, g = _load(file, overrides)
    folder = _resume_folder(resume, run_dir) if resume else run_dir or new_run_dir(graph)
    console.print(f"{'resuming' if resume else 'run folder:'} {folder}")
    _lending_note(graph)
    tracker = _tracker(graph, folder, resumed=bool(resume), overrides=set_ or [])
    feed, web = (None, None) if no_web else _web(g, folder)
    try:
        if quiet or not sys.stdout.isatty():
            view: Any = QuietView(console)
            result = run_graph(
                graph, run_dir=folder, on_update=_both(view, tracker, feed), resume=bool(resume)
            )
        else:
            with LiveView(console) as view:
                result = run_graph(
                    graph,
                    run_dir=folder,
                    on_update=_both(view, tracker, feed),
                    resume=bool(resume),
                )
    except GraphInvalid as err:  # the Ray cluster cannot hold the graph: nothing started
        if tracker is not None:
            tracker.abort(f"placement failed: {err}")
        if web is not None:
            web.stop()
        _print_problems(f"{file} on {graph.launcher}", err)
        raise typer.Exit(1) from None
    except BaseException as err:
        if tracker is not None:
            tracker.abort(f"{type(err).__name__}: {err}")
        if web is not None:
            web.stop()
        raise
    if feed is not None:
        feed.finish(result.status)
    try:
        _finish_run(graph, result, tracker)
    finally:
        if web is not None:
            web.stop()


def _web(g: Any, folder: Path) -> tuple[Any, Any]:
    """The live web view's feed and server; the URL (with its token) is printed."""
    from areal_flow.web import live_view

    folder.mkdir(parents=True, exist_ok=True)
    feed, web = live_view(g, folder)
    console.print(f"live view: {web.url}", highlight=False, soft_wrap=True)
    return feed, web


@app.command()
def view(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (live or finished).")],
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: a free one).")] = 0,
) -> None:
    """Serve the web view of a run folder from its files, until Ctrl-C."""
    import time

    from areal_flow.web import finished_view

    spec = run_dir / "graph.json"
    if not spec.exists():
        errors.print(f"[red]✗[/] {run_dir}: no graph.json here; give a run folder")
        raise typer.Exit(1)
    _, g = _load(spec, [])
    web = finished_view(g, run_dir, port)
    console.print(f"serving {run_dir}: {web.url}  (Ctrl-C stops)", highlight=False, soft_wrap=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        web.stop()


def _resume_folder(resume: Path, run_dir: Path | None) -> Path:
    """The run folder ``--resume`` continues, checked before anything starts."""
    from areal_flow.runtime import ResumeError
    from areal_flow.runtime.resume import resume_point

    if run_dir is not None and run_dir.resolve() != resume.resolve():
        errors.print(f"[red]✗[/] --resume {resume} continues that folder: drop --run-dir {run_dir}")
        raise typer.Exit(1)
    try:
        point = resume_point(resume)
    except ResumeError as err:
        errors.print(f"[red]✗[/] {err}", highlight=False)
        raise typer.Exit(1) from None
    console.print(f"from {point.checkpoint} (step {point.step}, policy version {point.version})")
    return resume


def _launcher_overrides(launcher: str | None, address: str | None) -> list[str]:
    if launcher not in (None, "local", "ray"):
        errors.print(f"[red]✗[/] --launcher {launcher!r}: use 'local' or 'ray'")
        raise typer.Exit(1)
    if address is not None and launcher == "local":
        errors.print("[red]✗[/] --address joins a Ray cluster: it needs --launcher ray")
        raise typer.Exit(1)
    overrides = [f"launcher={launcher}"] if launcher else []
    if address is not None:
        overrides += ["launcher=ray", f"ray.address={address}"]
    return overrides


def _tracker(
    graph: Graph, folder: Path, resumed: bool = False, overrides: list[str] | None = None
) -> Any:
    """The MLflow tracker of this run (a resumed run continues its MLflow run), or None."""
    if not graph.tracking.enabled:
        return None
    from areal_flow.runtime.tracking import RunTracker

    folder.mkdir(parents=True, exist_ok=True)
    return RunTracker(graph, folder, resumed=resumed, overrides=overrides or [])


def _both(*callbacks: Any) -> Any:
    def update(driver: Any) -> None:
        for callback in callbacks:
            if callback is not None:
                callback(driver)

    return update


def _finish_run(graph: Graph, result: Any, tracker: Any) -> None:
    """Summary (and held-out evaluation) of a finished run, MLflow closed, exit code set."""
    import time

    import psutil

    from areal_flow.eval_progress import EvalProgress
    from areal_flow.report import build_summary, eval_settings, evaluate_run, summary_table
    from areal_flow.runtime.tracking import latest_checkpoint

    folder = result.run_dir
    checkpoint = latest_checkpoint(folder)
    # Start-up is timed from this command's own start, as a user waiting for it counts it.
    summary = build_summary(result, checkpoint, launched_at=psutil.Process().create_time())
    settings = eval_settings(graph) if result.ok else None
    if settings is not None and checkpoint is not None:
        console.print(
            f"evaluating on {settings.problems} held-out problems of {settings.data} "
            f"({settings.samples} samples each, T={settings.temperature}) ..."
        )
        summary.eval_settings = dataclasses.asdict(settings)
        began = time.monotonic()
        log = folder / "logs" / "evaluation.log"
        with _engine_log_on_failure(log), EvalProgress(log) as progress:
            summary.base, summary.final, summary.base_cached = evaluate_run(
                settings,
                checkpoint,
                base=graph.evaluation.base if graph.evaluation else True,
                progress=progress,
            )
        summary.eval_s = time.monotonic() - began
    saved = summary.save(folder)
    if result.ok or summary.steps:
        console.print(summary_table(summary))
    if tracker is not None:
        tracker.finish(result, saved)
        console.print(f"MLflow: {tracker.ui_command}")
    if result.failure is not None:
        errors.print(f"[bold red]run failed:[/] {result.failure}", highlight=False)
        raise typer.Exit(1)
    if result.status == "interrupted":
        errors.print(f"[yellow]interrupted[/] after {result.wall_s:.1f} s; run folder {folder}")
        raise typer.Exit(130)
    console.print(
        f"[green]completed[/] in {result.wall_s:.1f} s, policy version {result.version}; "
        f"run folder {folder}"
    )


@contextlib.contextmanager
def _engine_log_on_failure(log: Path) -> Iterator[None]:
    """Name the engine's log (where an ``EvalProgress`` sent its output) if the block raises."""
    try:
        yield
    except BaseException:
        errors.print(f"[red]✗[/] evaluation failed; the engine's output is in {log}")
        raise


@app.command("eval")
def eval_(
    model: Annotated[
        str, typer.Option("--model", help="HF model folder, .gguf file or 'smollm2'.")
    ],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="'arithmetic' (held-out split), 'arithmetic:add1,sub1', or a dataset file.",
        ),
    ] = "arithmetic",
    problems: Annotated[int, typer.Option(min=1, help="Problems to score.")] = 200,
    samples: Annotated[int, typer.Option(min=1, help="Samples per problem (n).")] = 4,
    k: Annotated[int, typer.Option(min=1, help="k of pass@k (≤ samples).")] = 4,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature.")] = 0.7,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens per answer.")] = 96,
    engine: Annotated[str, typer.Option(help="'vllm' or 'hf'.")] = "vllm",
    seed: Annotated[int, typer.Option(help="Seed of the arithmetic split and sampling.")] = 0,
) -> None:
    """pass@1 and pass@k of a model on held-out problems, with the training verifier."""
    import tempfile

    from areal_flow.eval_progress import EvalProgress
    from areal_flow.evaluate import evaluate

    if engine not in ("vllm", "hf"):
        errors.print(f"[red]✗[/] --engine {engine!r}: use 'vllm' or 'hf'")
        raise typer.Exit(1)
    if k > samples:
        errors.print(f"[red]✗[/] --k {k} needs --samples ≥ {k}")
        raise typer.Exit(1)
    log = Path(tempfile.mkstemp(prefix="areal-flow-eval-", suffix=".log")[1])
    with _engine_log_on_failure(log), EvalProgress(log) as progress:
        result = evaluate(
            model,
            data,
            problems=problems,
            samples=samples,
            k=k,
            temperature=temperature,
            max_tokens=max_tokens,
            engine=engine,
            seed=seed,
            progress=progress,
        )
    log.unlink()
    table = Table(title=f"{model} on {data}: {samples} samples per problem, T={temperature}")
    for column in ("level", "problems", "pass@1", f"pass@{k}", "format"):
        table.add_column(column, justify="right" if column != "level" else "left")
    for level in result.pass1:
        table.add_row(
            level,
            str(result.problems[level]),
            f"{result.pass1[level]:.3f}",
            f"{result.pass_k[level]:.3f}",
            f"{result.format_rate[level]:.3f}",
        )
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
