"""Ranks 1..N−1 of a data-parallel trainer: ``python -m areal_flow.train.rank_main SPEC RANK
PARENT`` (started by a ``ranks.RankStarter`` for ``ranks.RankGroup.start``, never by hand).

Rules: the process dies with the thread that started it (parent-death signal, armed before
anything else): rank 0's monitor, whose PID is PARENT (a parent already gone ends it at once),
or, PARENT 0, the reaper of its Ray actor (``ray_actor.RankHost``). It pins itself to its
cores before torch is imported, builds the same ``ShardedPolicy`` as rank 0 (restoring its
optimizer shard from the checkpoint rank 0 resumes from) and serves rank 0's commands until
'stop'. Any error is printed with its traceback to the rank's log (which rank 0 quotes) and
exits 1.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from areal_flow.runtime.reaper import PR_SET_PDEATHSIG, _prctl
from areal_flow.train.ranks import GroupSpec, RankGroup


def main(argv: list[str]) -> int:
    spec_path, rank_text, parent = argv
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if int(parent) and os.getppid() != int(parent):
        return 1  # rank 0 died before the signal was armed
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the driver
    rank = int(rank_text)
    spec = GroupSpec.load(Path(spec_path))
    if spec.cpus[rank]:
        os.sched_setaffinity(0, spec.cpus[rank])
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {spec.name}.rank{rank} %(levelname)s %(name)s: %(message)s",
    )
    try:
        serve(spec, rank)
    except Exception:
        traceback.print_exc()
        return 1
    return 0


def serve(spec: GroupSpec, rank: int) -> None:
    import torch

    from areal_flow.train.algo import Optimizer
    from areal_flow.train.checkpoint import STATE_FILE
    from areal_flow.train.sharded import ShardedPolicy

    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    group = RankGroup.join(spec, rank)
    kwargs = dict(spec.policy)
    model_dir = Path(kwargs.pop("model_dir"))
    kwargs["optimizer"] = Optimizer(**kwargs["optimizer"])
    resume = Path(spec.resume) if spec.resume else None
    policy = ShardedPolicy(
        model_dir, group=group, resume=resume, device=spec.rank_device(rank), **kwargs
    )
    if resume is not None:
        policy.load_train_state(torch.load(resume / STATE_FILE, weights_only=True))
    logging.getLogger(__name__).info("rank %d of %d ready", rank, spec.world)
    policy.serve()
    group.destroy()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
