"""The staleness controller: AReaL's capacity rule (DESIGN.md §5, AReaL eq. 3) as a pure class.

**Unit: prompt groups**, the unit the trainer consumes (it takes ``G = batch_groups`` whole groups
per batch, whatever rows filters dropped inside them). A batch is trained in ``K =
updates_per_batch`` optimizer steps and every step is a policy version, so batch ``b`` starts at
version ``b·K``. With i the version the generators serve and η the max staleness:

    capacity = (⌊(η + i) / K⌋ + 1) · G − (accepted + running)          [groups]

K = 1 is AReaL's rule counted in groups. Rules:

- **The bound (our definition).** A group admitted while the generators serve version s is in a
  batch that starts at a version ≤ s + η; its batch's later minibatches train at up to K − 1
  versions more. So the lag of a trajectory at the optimizer step that trains it — trainer
  version before that step minus the trajectory's oldest token version — is at most η + K − 1,
  and at most η for the first minibatch of each batch. It holds for any filter: a group that
  loses rows still counts as one group on both sides; only a group filtered out whole gives
  its capacity back.
- **Whole admissions.** A source's batch of m groups is admitted only if all m fit. When nothing
  can ever open the gate again (nothing in flight, the trainer still short of its batch, the
  batch does not fit) the controller raises instead of letting the graph hang.
- η = 0 is synchronous training: generation of batch b starts only once the generators serve
  version b·K, after the trainer finished batch b − 1. η = None turns the gate off.
- ``settle`` moves a group out of ``running``: accepted (the trainer got at least one of its
  trajectories) keeps its capacity — the trainer owns it; rejected (filtered out whole) gives it
  back. ``lose`` gives back what died with a restarted replica, ``cancel`` what was admitted but
  never sent. Versions never go backwards.
- Guarantee and its limit: the gate bounds the *volume* of admitted data. The per-trajectory
  bound holds when groups complete in admission order (always for η = 0); a very long generation
  overtaken by many later ones can arrive with a larger lag (interruptible rollouts mitigate
  that). The lag histogram (``record_lags``, per trajectory at arrival) records what happened.
- i is the version the *generators serve*: the newest one every generator replica has loaded
  (``set_serving``), capped by the trainer's version — AReaL advances the rollout side's
  version only after the inference engines took the new weights. Using the trainer's version
  would admit data for version i while the generators still sample with i − 1. Without
  generators that report (``serving`` None) the trainer's version stands in. Lags are always
  measured against the trainer's version.
- Resume (AReaL issue #1388 / PR #1345): groups in flight at the crash died with the processes
  and must not hold capacity, and ``accepted`` must be what the restored trainer holds, not the
  crashed run's counter. ``from_state`` does both, from the groups the checkpoint holds.
- No I/O, no threads, no clocks: the driver calls it from its single control loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral
from typing import Any

_STATE_KEYS = (
    "batch_groups",
    "updates_per_batch",
    "max_lag",
    "version",
    "accepted",
    "running",
    "rejected",
    "admitted",
)


class StalenessController:
    """Counts admitted, in-flight, accepted and rejected prompt groups against the bound."""

    def __init__(
        self,
        batch_groups: int,
        max_lag: int | None,
        updates_per_batch: int = 1,
        version: int = 0,
    ) -> None:
        if batch_groups < 1:
            raise ValueError(f"batch_groups must be ≥ 1 group per batch, got {batch_groups}")
        if updates_per_batch < 1:
            raise ValueError(f"updates_per_batch K must be ≥ 1, got {updates_per_batch}")
        if max_lag is not None and max_lag < 0:
            raise ValueError(f"max_lag η must be ≥ 0 or None (unbounded), got {max_lag}")
        if version < 0:
            raise ValueError(f"version must be ≥ 0, got {version}")
        self.batch_groups = batch_groups
        self.updates_per_batch = updates_per_batch
        self.max_lag = max_lag
        self.version = version
        self.serving: int | None = None  # newest version all generators have loaded
        self.accepted = 0  # groups delivered to the trainer (cumulative over the run)
        self.running = 0  # admitted, not yet settled
        self.rejected = 0  # filtered out whole (cumulative)
        self.admitted = 0  # cumulative
        self.lost = 0  # died in flight: with a restarted replica or before a resume (cumulative)
        self.lag_histogram: dict[int, int] = {}  # trainer version − rollout version → trajectories

    # ----------------------------------------------------------------------------------- gate

    @property
    def capacity(self) -> float:
        """Groups that may still be admitted now; ``inf`` when the gate is off."""
        if self.max_lag is None:
            return float("inf")
        batches = (self.max_lag + self.admission_version) // self.updates_per_batch + 1
        return float(batches * self.batch_groups - (self.accepted + self.running))

    @property
    def admission_version(self) -> int:
        """The i of the capacity rule: the serving version, capped by the trainer's."""
        return self.version if self.serving is None else min(self.serving, self.version)

    @property
    def needed(self) -> int:
        """Groups the trainer must have received to finish the batch it is on (or starts)."""
        return (self.version // self.updates_per_batch + 1) * self.batch_groups

    def can_admit(self, groups: int) -> bool:
        """Whether ``groups`` more groups fit now.

        Raises RuntimeError when they do not fit and never will: nothing in flight, the trainer
        still short of the batch that would advance the version, and the generators already
        serving it (a pending weight load would reopen the gate).
        """
        _check_count("groups", groups, minimum=1)
        if self.capacity >= groups:
            return True
        stuck = self.running == 0 and self.admission_version == self.version
        if stuck and self.accepted < self.needed:
            raise RuntimeError(
                f"staleness gate can never admit {groups} groups at once: capacity "
                f"{self.capacity:.0f} with nothing in flight and the trainer waiting for "
                f"{self.needed - self.accepted} more groups (batch_groups={self.batch_groups}, "
                f"K={self.updates_per_batch}, η={self.max_lag}, version={self.version}). Make "
                "the source emit fewer groups per batch, or raise staleness.max_lag."
            )
        return False

    # --------------------------------------------------------------------------------- events

    def admit(self, groups: int) -> None:
        """``groups`` prompt groups enter the graph."""
        if not self.can_admit(groups):
            raise RuntimeError(
                f"admit({groups}) with capacity {self.capacity:.0f}: call can_admit first"
            )
        self.running += int(groups)
        self.admitted += int(groups)

    def settle(self, accepted: bool) -> None:
        """One in-flight group is resolved: the trainer got some of it (``accepted``), or
        filters dropped all of it (its capacity comes back)."""
        self._leave_running("settle", 1)
        self.running -= 1
        if accepted:
            self.accepted += 1
        else:
            self.rejected += 1

    def lose(self, groups: int) -> None:
        """``groups`` in-flight groups died with a replica (restarted stateless node): their
        capacity comes back and they are counted as ``lost``; their source issues them again."""
        self._leave_running("lose", groups)
        self.running -= int(groups)
        self.lost += int(groups)

    def cancel(self, groups: int) -> None:
        """``groups`` admitted groups never entered the graph as counted work (the source had
        nothing, skipped a group already trained before a resume, or re-issued a group that
        another copy already stands for): as if they had never been admitted."""
        self._leave_running("cancel", groups)
        self.running -= int(groups)
        self.admitted -= int(groups)

    def record_lags(self, versions: Sequence[int]) -> None:
        """Trajectories reached the trainer; ``versions`` (one per trajectory) are the policy
        versions that produced them (the oldest token's, see ``areal_flow.rl.versions``)."""
        for v in versions:
            lag = self.version - int(v)
            if lag < 0:
                raise ValueError(
                    f"trajectory version {v} is newer than the trainer version "
                    f"{self.version}: set_version must be called when the trainer steps, "
                    "before generators receive the weights"
                )
            self.lag_histogram[lag] = self.lag_histogram.get(lag, 0) + 1

    def set_version(self, version: int) -> None:
        """The trainer finished a step: its policy is now ``version``."""
        if version < self.version:
            raise ValueError(f"policy version went backwards: {self.version} → {version}")
        self.version = version

    def set_serving(self, version: int) -> None:
        """Every generator has now loaded ``version`` (or newer); never goes backwards."""
        _check_count("version", version, minimum=0)
        self.serving = version if self.serving is None else max(self.serving, version)

    def _leave_running(self, event: str, groups: int) -> None:
        _check_count("groups", groups, minimum=0)
        if groups > self.running:
            raise ValueError(
                f"{event}({groups}) but only {self.running} groups are in flight: "
                "every group must be admitted before it is settled, lost or cancelled"
            )

    # -------------------------------------------------------------------------------- metrics

    def metrics(self) -> dict[str, float]:
        """A flat dict for tracking: counters (groups), capacity (``inf`` if unbounded) and lag
        counts (trajectories)."""
        out = {
            "accepted": float(self.accepted),
            "running": float(self.running),
            "rejected": float(self.rejected),
            "admitted": float(self.admitted),
            "lost": float(self.lost),
            "capacity": self.capacity,
            "version": float(self.version),
            "serving": float(self.admission_version),
        }
        total = sum(self.lag_histogram.values())
        for lag, count in sorted(self.lag_histogram.items()):
            out[f"lag/{lag}"] = float(count)
        if total:
            out["lag_mean"] = sum(lag * c for lag, c in self.lag_histogram.items()) / total
            out["lag_max"] = float(max(self.lag_histogram))
        return out

    # ----------------------------------------------------------------------------- checkpoint

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot (histogram keys become strings)."""
        state: dict[str, Any] = {key: getattr(self, key) for key in _STATE_KEYS}
        state["lost"] = self.lost
        state["lag_histogram"] = {str(lag): c for lag, c in self.lag_histogram.items()}
        return state

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], *, held: int, version: int | None = None
    ) -> StalenessController:
        """Rebuild after a crash and resume.

        ``held`` counts the groups the restored trainer checkpoint holds (trained, pending, or
        in its interrupted batch); ``version`` is its version (default: the snapshot's). Then
        ``accepted = held`` and ``running = 0``: in-flight and unsaved accepted groups died with
        the old processes and are counted as ``lost``, never as held capacity.
        """
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"staleness state lacks {missing}; pass a dict from state_dict()")
        _check_count("held", held, minimum=0)
        restored_version = int(state["version"]) if version is None else version
        ctl = cls(
            int(state["batch_groups"]),
            state["max_lag"],
            int(state["updates_per_batch"]),
            restored_version,
        )
        ctl.accepted = held
        ctl.rejected = int(state["rejected"])
        ctl.admitted = int(state["admitted"])
        # Everything admitted that is neither held by the trainer nor rejected is gone.
        ctl.lost = ctl.admitted - ctl.accepted - ctl.rejected
        if ctl.lost < 0:
            raise ValueError(
                f"restored trainer holds {held} groups (version {restored_version}) but the "
                f"snapshot only admitted {ctl.admitted} − {ctl.rejected} rejected: the snapshot "
                "is older than the trainer checkpoint; save both together"
            )
        ctl.lag_histogram = {int(k): int(c) for k, c in state.get("lag_histogram", {}).items()}
        return ctl


def _check_count(name: str, value: int, *, minimum: int) -> None:
    # numbers.Integral admits numpy/Arrow scalars; bool is an int but never a count.
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an int ≥ {minimum}, got {value!r}")
