"""Ranks 1..N−1 of a data-parallel trainer as Ray actors (rank 0's side of the Ray launcher).

Rules:
- Rank 0 (the trainer's worker process, on its Ray node) connects to the run's cluster
  (``RankPlacement.ray_address``) as a Ray job of its own and starts one ``RankHost`` actor per
  rank in the rank's bundle of the driver's placement group, asking for exactly that bundle's
  resources (one GPU each when the trainer has one per rank: each rank sees it as cuda:0).
- The actors belong to rank 0's job: they end with rank 0's process (Ray ends a job's actors
  when its driver goes) and when ``close`` disconnects; the rank under each dies with its
  actor (its reaper's parent-death signal).
- Each rank's handle is the driver's ``RayHandle``: its exit code comes once the rank's
  processes are gone, a dead actor reads as SIGKILL, and its output is pulled into
  ``logs/<trainer>.rank<r>.log`` of rank 0's run folder, where the failure report quotes it.
- The rendezvous is rank 0's ``TCPStore`` at ``rendezvous_host:rendezvous_port``, the address
  and port the launcher reserved on rank 0's Ray node from ``ray.data_ports``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from areal_flow.runtime.plan import RankPlacement
from areal_flow.runtime.ray_actor import RankHost
from areal_flow.runtime.ray_launcher import NAMESPACE, RayHandle, import_ray, replica_env
from areal_flow.train.ranks import GroupSpec


class RayRank(RayHandle):
    """One rank actor, as the rank group's monitor sees it."""

    @property
    def label(self) -> str:
        return f"Ray actor {self.key}"


class RayRanks:
    """Starts ranks 1..N−1 as Ray actors in their bundles (a ``ranks.RankStarter``)."""

    def __init__(self, placement: RankPlacement) -> None:
        self.placement = placement
        self.host = placement.rendezvous_host
        self.port = placement.rendezvous_port
        self.own_gpu = placement.bundle.get("GPU", 0.0) >= 1
        self.ray = import_ray()
        self.owns_ray = not self.ray.is_initialized()
        if self.owns_ray:
            self.ray.init(address=placement.ray_address, namespace=NAMESPACE, log_to_driver=False)
        self.host_class = self.ray.remote(RankHost)

    def launch(self, spec: GroupSpec, spec_path: Path, rank: int) -> RayRank:
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        wanted = self.placement.bundle
        memory = wanted.get("memory")
        group = PlacementGroup(PlacementGroupID(bytes.fromhex(self.placement.placement_group)))
        name = f"{self.placement.actor_prefix}:rank{rank}"
        actor: Any = self.host_class.options(
            name=name,
            namespace=NAMESPACE,
            num_cpus=wanted.get("CPU", 0.0),
            num_gpus=wanted.get("GPU", 0.0),
            memory=int(memory) if memory else None,
            max_concurrency=4,  # ``read_log`` and ``stop`` answer while ``run_rank`` waits
            max_restarts=0,  # a dead rank stops the group
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=group,
                placement_group_bundle_index=self.placement.bundles[rank - 1],
            ),
        ).remote(name)
        env = replica_env(float(spec.threads))
        done = actor.run_rank.remote(
            Path(spec_path).read_text(), str(spec_path), rank, env, os.getcwd()
        )
        return RayRank(name, actor, done, spec.log_path(rank), self.ray)

    def close(self) -> None:
        if self.owns_ray:
            self.owns_ray = False
            self.ray.shutdown()
