"""The Ray launcher: node replicas as Ray actors in one placement group.

Rules:
- Placement comes first: before anything starts, the graph is checked against the alive Ray
  nodes (``ray_placement.cluster_problems``: which node, which resource), then one placement
  group is created with a bundle per replica, and one more per rank 1..N−1 of a trainer of N
  ranks (``graph.ray.strategy``, default PACK), and must be granted within
  ``graph.ray.placement_timeout_s``. Both failures raise ``GraphInvalid``.
- Address exchange: ``prepare`` starts one idle ``ReplicaHost`` actor per replica in its
  bundle and asks where it landed. When every actor shares the driver's Ray node, all sockets
  stay on 127.0.0.1; otherwise each binds its own node's IP (and the driver its own). Each
  node's ports are reserved by one of its actors, from ``graph.ray.data_ports``; the plan the
  driver saves and every actor reads carries the result. A restarted replica's new actor lands
  in the same bundle, hence the same node, and binds the same address.
- A trainer of several ranks gets a ``RankPlacement`` in its replica plan: its rank bundles,
  the cluster's address, and the rendezvous its rank 0 binds — one more port reserved with its
  node's data ports, on that node's address (loopback when the whole run, rank bundles
  included, is on the driver's machine). Rank 0 starts the rank actors itself
  (``ray_ranks``); the driver sees one replica.
- Off one node the run needs CurveZMQ: the plan gets ``curve`` (the driver then makes the run's
  keys in its run folder). Actors on other hosts cannot read that folder, so ``start`` hands
  each actor the key material with its ``run`` call (four Z85 strings, as Ray task arguments:
  authenticated by Ray's token, encrypted only where Ray's TLS is on); the actor writes them
  into its own copy of the run folder, 0600, before the replica loads them (``ray_actor``).
- An actor runs its replica as a child process — the same worker under the same reaper as
  the local launcher's — that dies with it (``ray_actor``). The driver's handle pulls the
  child's output every ``LOG_PULL_S`` into ``logs/<node>.<replica>.log`` of the run folder,
  and once more when the replica exits, so the failure report's last log lines are complete
  even across nodes.
- A handle's ``poll``/``kill`` mean what they mean for a local process: the exit code comes
  once every process of the replica is gone, and ``kill`` has the actor end them and wait for
  that (``STOP_WAIT_S``) before the actor itself is killed. An actor that died (killed, its node
  lost, Ray's memory monitor: any ``RayError`` of its task) reads as an exit by SIGKILL (-9),
  with the reason appended to the log; its replica's
  reaper then clears the replica's processes on its own, which the driver does not wait for
  (it has no one left on that node to ask).
- ``import ray`` happens only here, inside functions; without it, ``launcher: ray`` is a graph
  problem that says how to install it.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from areal_flow.graph import GraphInvalid, Problem
from areal_flow.runtime.launcher import Handle, log_path
from areal_flow.runtime.plan import RankPlacement, ReplicaPlan, RunPlan
from areal_flow.runtime.ray_actor import ReplicaHost
from areal_flow.runtime.ray_placement import (
    RESOURCES,
    cluster_problems,
    rank_bundles,
    replica_bundles,
    reserve_ports,
    rewire,
)
from areal_flow.spec import Graph
from areal_flow.transport.curve import key_material, load_run_keys

LOOPBACK = "127.0.0.1"
NAMESPACE = "areal_flow"
LOG_PULL_S = 0.5  # the driver fetches new log output this often per replica
FINAL_PULL_S = 10.0  # the last log fetch of a replica that ended may take this long
KILL_PULL_S = 2.0  # ... and of one being killed (the driver stops everything within 10 s)
KILLED = -9  # an actor that died took its replica with it (SIGKILL), as kill -9 would
STOP_WAIT_S = 25.0  # an actor told to stop its replica waits this long for its processes to go
# Environment the driver passes on to every replica (node's own variables are kept).
PASSED_ENV = (
    "AREAL_FLOW_",
    "HF_",
    "MLFLOW_",
    "VLLM_",
    "TRANSFORMERS_",
    "TOKENIZERS_",
    "TORCH_",
    "PYTORCH_",
    "PYTHONPATH",
)


def import_ray() -> Any:
    """The ``ray`` module, or a graph problem that says how to install it."""
    try:
        import ray
    except ImportError:
        raise GraphInvalid(
            [
                Problem(
                    "launcher",
                    "'ray' needs the ray package: pip install -e '.[ray]' "
                    "(or scripts/setup.sh ray)",
                )
            ]
        ) from None
    return ray


class RayHandle:
    """The driver's view of one replica's actor."""

    def __init__(self, key: str, actor: Any, done: Any, log: Path, ray: Any) -> None:
        self.key = key
        self.pid: int | None = None  # the replica's process lives on a Ray node
        self.actor = actor
        self._done = done  # the actor's ``run`` result: the exit code
        self._log = log
        self._ray = ray
        self._offset = 0
        self._pending: Any = None
        self._next_pull = 0.0
        self._code: int | None = None
        log.parent.mkdir(parents=True, exist_ok=True)

    def poll(self) -> int | None:
        if self._code is not None:
            return self._code
        self._pull_log()
        ready, _ = self._ray.wait([self._done], timeout=0)
        if not ready:
            return None
        try:
            code = int(self._ray.get(self._done))
        except self._ray.exceptions.RayError as err:  # its actor died, or Ray's OOM killer
            self._note(f"the Ray actor of {self.key} died: {_first_line(err)}")
            code = KILLED
        else:
            self._pull_log(final=FINAL_PULL_S)
        self._end(code)
        return code

    def kill(self) -> None:
        if self._code is None:
            self._stop()
            self._pull_log(final=KILL_PULL_S)
            self._note(f"{self.key} killed: its Ray actor was stopped")
            self._end(KILLED)

    def _stop(self) -> None:
        """Have the actor end the replica's processes and wait until they are gone."""
        exceptions = self._ray.exceptions
        try:
            gone = self._ray.get(self.actor.stop.remote(STOP_WAIT_S), timeout=STOP_WAIT_S + 5)
        except exceptions.GetTimeoutError:
            gone = False
        except exceptions.RayError:
            return  # the actor is gone, and its replica's reaper had its parent-death signal
        if not gone:
            self._note(f"the processes of {self.key} were not gone {STOP_WAIT_S:g} s after stop")

    def _end(self, code: int) -> None:
        self._code = code
        self._ray.kill(self.actor, no_restart=True)

    def _pull_log(self, final: float | None = None) -> None:
        """Fetch new output: a request every ``LOG_PULL_S``, never waiting — or, ``final``,
        everything left, waiting up to that many seconds."""
        if self._pending is not None:
            ready, _ = self._ray.wait([self._pending], timeout=final or 0)
            if not ready:
                return
            self._append(self._pending)
            self._pending = None
        if final is not None:
            self._append(self.actor.read_log.remote(self._offset), final)
        elif time.monotonic() >= self._next_pull:
            self._pending = self.actor.read_log.remote(self._offset)
            self._next_pull = time.monotonic() + LOG_PULL_S

    def _append(self, ref: Any, timeout: float | None = None) -> None:
        exceptions = self._ray.exceptions
        try:
            start, data = self._ray.get(ref, timeout=timeout)
        except exceptions.GetTimeoutError:
            self._note(f"the last output of {self.key} did not arrive within {timeout:g} s")
            return
        except exceptions.RayError:
            return  # the exit code reports the death, with its reason
        with self._log.open("ab") as out:
            if start > self._offset:
                out.write(f"[areal-flow] {start - self._offset} bytes of output lost\n".encode())
            out.write(data)
        self._offset = start + len(data)

    def _note(self, text: str) -> None:
        with self._log.open("a") as out:
            out.write(f"[areal-flow] {text}\n")


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


class RayLauncher:
    """Starts replicas as Ray actors; a context manager that frees the cluster at exit."""

    def __init__(self, graph: Graph, run_dir: Path) -> None:
        self.ray = import_ray()
        self.graph = graph
        self.options = graph.ray
        self.run_name = run_dir.name
        self.owns_ray = not self.ray.is_initialized()
        if self.owns_ray:
            # Replicas' output goes to the run folder, not the driver's terminal; a cluster
            # started here is only for this run (no dashboard).
            self.ray.init(
                address=self.options.address, log_to_driver=False, include_dashboard=False
            )
        self.fresh: dict[str, Any] = {}  # idle actors from ``prepare``, by replica key
        self.handles: list[RayHandle] = []
        self.started = 0
        self.pg: Any = None
        self._plan_json: str | None = None
        self._keys: list[str] | None = None  # the run's CurveZMQ keys, for the actors
        try:
            self._place()
        except BaseException:
            self.close()
            raise
        self.host_class = self.ray.remote(ReplicaHost)

    def __enter__(self) -> RayLauncher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- placement ----------------------------------------------------------------------------

    def _place(self) -> None:
        ray = self.ray
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        problems = cluster_problems(self.graph, nodes)
        if problems:
            raise GraphInvalid(problems)
        self.bundles = replica_bundles(self.graph)
        self.bundle_index = {f"{n}/{r}": i for i, (n, r, _) in enumerate(self.bundles)}
        ranks = rank_bundles(self.graph)
        self.rank_bundles: dict[str, list[int]] = {}  # replica key -> bundles of rank 1, 2, ...
        for i, (n, r, _, _) in enumerate(ranks, start=len(self.bundles)):
            self.rank_bundles.setdefault(f"{n}/{r}", []).append(i)
        from ray.util.placement_group import placement_group

        self.pg = placement_group(
            [b for *_, b in self.bundles] + [b for *_, b in ranks],
            strategy=self.options.strategy,
            name=f"areal-flow:{self.run_name}",
        )
        timeout = self.options.placement_timeout_s
        ready, _ = ray.wait([self.pg.ready()], timeout=timeout)
        if not ready:
            free = {k: v for k, v in ray.available_resources().items() if k in RESOURCES}
            raise GraphInvalid(
                [
                    Problem(
                        "resources",
                        f"Ray did not grant the {len(self.pg.bundle_specs)} bundles within "
                        f"{timeout:g} s "
                        f"(free now: {_describe(free)}); other jobs hold what the graph needs — "
                        "wait for them, or raise ray.placement_timeout_s",
                    )
                ]
            )

    def _new_host(self, key: str) -> Any:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        index = self.bundle_index[key]
        wanted = self.bundles[index][2]
        self.started += 1
        memory = wanted.get("memory")
        return self.host_class.options(
            name=f"{self.run_name}:{key}:{self.started}",
            namespace=NAMESPACE,
            num_cpus=wanted.get("CPU", 0.0),
            num_gpus=wanted.get("GPU", 0.0),
            memory=int(memory) if memory else None,
            max_concurrency=4,  # ``read_log`` answers while ``run`` waits for the replica
            max_restarts=0,  # the driver decides about restarts, as for local processes
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=self.pg, placement_group_bundle_index=index
            ),
        ).remote(key)

    # -- the Launcher interface ---------------------------------------------------------------

    def prepare(self, plan: RunPlan) -> RunPlan:
        """Start an idle actor per replica and give the plan the addresses they can bind."""
        ray = self.ray
        self.fresh = {r.key: self._new_host(r.key) for r in plan.replicas}
        answers = ray.get([a.where.remote() for a in self.fresh.values()])
        places = dict(zip(self.fresh, answers, strict=True))
        here = ray.get_runtime_context().get_node_id()
        rank_nodes = self._bundle_nodes()
        spread = any(p["node_id"] != here for p in places.values()) or any(
            rank_nodes[i] != here for bundles in self.rank_bundles.values() for i in bundles
        )
        low, high = self.options.data_ports
        control_host = ray.util.get_node_ip_address() if spread else LOOPBACK
        (control_port,) = reserve_ports(control_host, 1, low, high)
        by_node: dict[str, list[ReplicaPlan]] = {}
        for replica in plan.replicas:
            by_node.setdefault(places[replica.key]["node_id"], []).append(replica)
        inputs: dict[str, list[str]] = {}
        ranks: dict[str, RankPlacement] = {}
        for node_id, replicas in by_node.items():
            host = places[replicas[0].key]["ip"] if spread else LOOPBACK
            grouped = [r for r in replicas if r.key in self.rank_bundles]  # one rendezvous each
            count = sum(len(r.inputs) for r in replicas) + len(grouped)
            exclude = [control_port] if node_id == here else []
            actor = self.fresh[replicas[0].key]
            ports = iter(ray.get(actor.reserve.remote(host, count, low, high, exclude)))
            for replica in replicas:
                inputs[replica.key] = [f"tcp://{host}:{next(ports)}" for _ in replica.inputs]
            for replica in grouped:
                ranks[replica.key] = self._rank_placement(replica.key, host, next(ports))
        gpus = {key: place["gpus"] for key, place in places.items()}
        wired = rewire(plan, inputs, f"tcp://{control_host}:{control_port}", gpus)
        wired = wired.model_copy(
            update={
                "replicas": [
                    r.model_copy(update={"ranks": ranks.get(r.key)}) for r in wired.replicas
                ]
            }
        )
        return wired.model_copy(update={"curve": plan.curve or spread})

    def _bundle_nodes(self) -> dict[int, str]:
        """The Ray node of every bundle of the granted placement group."""
        from ray.util.placement_group import placement_group_table

        table = placement_group_table(self.pg)
        return {int(i): str(node) for i, node in table["bundles_to_node_id"].items()}

    def _rank_placement(self, key: str, host: str, port: int) -> RankPlacement:
        bundles = self.rank_bundles[key]
        return RankPlacement(
            rendezvous_host=host,
            rendezvous_port=port,
            ray_address=str(self.ray.get_runtime_context().gcs_address),
            placement_group=self.pg.id.hex(),
            bundles=bundles,
            bundle=self.pg.bundle_specs[bundles[0]],
            actor_prefix=f"{self.run_name}:{key}",
        )

    def start(self, plan: RunPlan, plan_path: Path, replica: ReplicaPlan) -> Handle:
        actor = self.fresh.pop(replica.key, None) or self._new_host(replica.key)
        if self._plan_json is None:
            self._plan_json = plan_path.read_text()
        if plan.curve and self._keys is None:
            self._keys = key_material(load_run_keys(plan.run_dir))
        cpus = self.graph.node(replica.node).resources.cpus
        done = actor.run.remote(
            self._plan_json,
            str(plan_path),
            replica.node,
            replica.replica,
            replica_env(cpus),
            os.getcwd(),
            self._keys,
        )
        log = log_path(Path(plan.run_dir), replica.node, replica.replica)
        handle = RayHandle(replica.key, actor, done, log, self.ray)
        self.handles.append(handle)
        return handle

    def close(self) -> None:
        """Kill what is left, free the placement group, leave a cluster we started."""
        for handle in self.handles:
            if handle.poll() is None:
                handle.kill()
        for actor in self.fresh.values():
            self.ray.kill(actor, no_restart=True)
        self.fresh = {}
        if self.pg is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.pg)
            self.pg = None
        if self.owns_ray:
            self.ray.shutdown()
            self.owns_ray = False


def _describe(resources: dict[str, float]) -> str:
    return ", ".join(
        f"{v / 1024**3:.3g} GiB memory" if k == "memory" else f"{v:g} {k}"
        for k, v in sorted(resources.items())
    )


def replica_env(cpus: float) -> dict[str, str]:
    """What a replica's process gets from the driver's environment, and its thread counts
    (Ray does not pin cores: whole CPUs become threads, light replicas get one)."""
    env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV)}
    threads = str(max(1, math.floor(cpus)))
    return {**env, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
