"""The staleness controller: AReaL's capacity rule (DESIGN.md §5, AReaL eq. 3) as a pure class.

With batch size B (trajectories per training step), trainer policy version i and max staleness η,

    capacity = (η + i + 1) · B − (accepted + running)

Rules:
- **Whole groups only.** A prompt group of n trajectories is admitted only if it fits entirely,
  ``capacity ≥ n`` (the paper's ``capacity > 0`` would let the last group overshoot the bound by
  up to n − 1 trajectories, which breaks η = 0 = synchronous). A group is never split.
- Consequence: when no admission can ever open the gate again (nothing in flight, the trainer
  still short of its batch, the group does not fit) the controller raises instead of letting
  the graph hang; with η = 0 that happens when B is not a multiple of the group size.
- η = 0 is synchronous training: at version i at most (i + 1)·B trajectories are ever admitted,
  so the trainer only steps when nothing is in flight, and every trajectory is sampled by the
  version that trains on it (lag 0). η = None turns the gate off.
- ``reject`` gives capacity back (filtered-out trajectories); ``accept`` does not (the trainer
  owns them). ``lose`` gives back what died with a restarted replica, ``cancel`` what was
  admitted but never sent. Versions never go backwards.
- Guarantee and its limit: the gate bounds the *volume* of admitted data. Per-trajectory lag
  ≤ η holds when trajectories complete in admission order (always for η = 0); a very long
  generation overtaken by many later ones can arrive with a larger lag (interruptible rollouts
  mitigate that). The lag histogram records what really happened.
- i is the version the *generators serve*: the newest one every generator replica has loaded
  (``set_serving``), capped by the trainer's version — AReaL advances the rollout side's
  version only after the inference engines took the new weights. Using the trainer's version
  instead would admit data for version i while the generators still sample with i − 1
  (a publish and load take seconds): the lag bound would slip by one and η = 0 would not be
  synchronous. Without generators that report (``serving`` None) the trainer's version stands
  in. Lags are always measured against the trainer's version.
- Resume (AReaL issue #1388 / PR #1345): trajectories in flight at the crash were lost with
  the processes and must not hold capacity, and ``accepted`` must match the restored trainer
  version, not the counter of the crashed run (or 0). ``from_state`` does both.
- No I/O, no threads, no clocks: the driver calls it from its single control loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral
from typing import Any

_STATE_KEYS = ("batch_size", "max_lag", "version", "accepted", "running", "rejected", "admitted")


class StalenessController:
    """Counts admitted, in-flight, accepted and rejected trajectories against the bound."""

    def __init__(self, batch_size: int, max_lag: int | None, version: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(
                f"batch_size must be ≥ 1 trajectory per training step, got {batch_size}"
            )
        if max_lag is not None and max_lag < 0:
            raise ValueError(f"max_lag η must be ≥ 0 or None (unbounded), got {max_lag}")
        if version < 0:
            raise ValueError(f"version must be ≥ 0, got {version}")
        self.batch_size = batch_size
        self.max_lag = max_lag
        self.version = version
        self.serving: int | None = None  # newest version all generators have loaded
        self.accepted = 0  # delivered to the trainer (cumulative over the run)
        self.running = 0  # admitted, not yet accepted or rejected
        self.rejected = 0  # filtered out (cumulative)
        self.admitted = 0  # cumulative
        self.lost = 0  # died in flight: with a restarted replica or before a resume (cumulative)
        self.lag_histogram: dict[int, int] = {}  # trainer version − rollout version → count

    # ----------------------------------------------------------------------------------- gate

    @property
    def capacity(self) -> float:
        """Trajectories that may still be admitted now; ``inf`` when the gate is off."""
        if self.max_lag is None:
            return float("inf")
        bound = (self.max_lag + self.admission_version + 1) * self.batch_size
        return float(bound - (self.accepted + self.running))

    @property
    def admission_version(self) -> int:
        """The i of the capacity rule: the serving version, capped by the trainer's."""
        return self.version if self.serving is None else min(self.serving, self.version)

    def can_admit(self, group_size: int) -> bool:
        """Whether a whole group of ``group_size`` trajectories fits now.

        Raises RuntimeError when it does not fit and never will: nothing in flight, the trainer
        still short of the batch that would advance the version, and the generators already
        serving it (a pending weight load would reopen the gate), so the gate cannot reopen.
        """
        _check_count("group_size", group_size, minimum=1)
        if self.capacity >= group_size:
            return True
        stuck = self.running == 0 and self.admission_version == self.version
        if stuck and self.accepted < (self.version + 1) * self.batch_size:
            raise RuntimeError(
                f"staleness gate can never admit a group of {group_size}: capacity "
                f"{self.capacity:.0f} with nothing in flight and the trainer waiting for "
                f"{(self.version + 1) * self.batch_size - self.accepted} more trajectories "
                f"(B={self.batch_size}, η={self.max_lag}, version={self.version}). Make the "
                "trainer batch a multiple of the group size, or raise staleness.max_lag."
            )
        return False

    # --------------------------------------------------------------------------------- events

    def admit(self, group_size: int) -> None:
        """A prompt group of ``group_size`` trajectories enters the graph."""
        if not self.can_admit(group_size):
            raise RuntimeError(
                f"admit({group_size}) with capacity {self.capacity:.0f}: call can_admit first"
            )
        self.running += int(group_size)
        self.admitted += int(group_size)

    def accept(self, n: int, versions: Sequence[int] | None = None) -> None:
        """``n`` trajectories reached the trainer.

        ``versions`` (optional, one per trajectory) are the policy versions that produced
        them (the oldest token's version, see ``areal_flow.rl.versions``); their lag behind the
        current trainer version goes into the histogram.
        """
        self._leave_running("accept", n)
        if versions is not None:
            if len(versions) != n:
                raise ValueError(
                    f"accept({n}) got {len(versions)} versions; pass one per trajectory"
                )
            for v in versions:
                lag = self.version - int(v)
                if lag < 0:
                    raise ValueError(
                        f"trajectory version {v} is newer than the trainer version "
                        f"{self.version}: set_version must be called when the trainer steps, "
                        "before generators receive the weights"
                    )
                self.lag_histogram[lag] = self.lag_histogram.get(lag, 0) + 1
        self.running -= int(n)
        self.accepted += int(n)

    def reject(self, n: int) -> None:
        """``n`` in-flight trajectories were filtered out: their capacity comes back."""
        self._leave_running("reject", n)
        self.running -= int(n)
        self.rejected += int(n)

    def lose(self, n: int) -> None:
        """``n`` in-flight trajectories died with a replica (restarted stateless node): their
        capacity comes back and they are counted as ``lost``; their prompts are issued again."""
        self._leave_running("lose", n)
        self.running -= int(n)
        self.lost += int(n)

    def cancel(self, n: int) -> None:
        """``n`` admitted trajectories never entered the graph as counted work (the source had
        nothing, skipped a group already trained before a resume, or re-issued a group that
        another copy already stands for): as if they had never been admitted."""
        self._leave_running("cancel", n)
        self.running -= int(n)
        self.admitted -= int(n)

    def set_version(self, version: int) -> None:
        """The trainer finished a step: its policy is now ``version``."""
        if version < self.version:
            raise ValueError(f"policy version went backwards: {self.version} → {version}")
        self.version = version

    def set_serving(self, version: int) -> None:
        """Every generator has now loaded ``version`` (or newer); never goes backwards."""
        _check_count("version", version, minimum=0)
        self.serving = version if self.serving is None else max(self.serving, version)

    def _leave_running(self, event: str, n: int) -> None:
        _check_count("n", n, minimum=0)
        if n > self.running:
            raise ValueError(
                f"{event}({n}) but only {self.running} trajectories are in flight: "
                "every trajectory must be admitted before it is accepted or rejected"
            )

    # -------------------------------------------------------------------------------- metrics

    def metrics(self) -> dict[str, float]:
        """A flat dict for tracking: counters, capacity (``inf`` if unbounded) and lag counts."""
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
        cls, state: Mapping[str, Any], *, version: int | None = None, buffered: int = 0
    ) -> StalenessController:
        """Rebuild after a crash and resume.

        ``version`` is the restored trainer's version (default: the snapshot's). ``buffered``
        counts trajectories the trainer's checkpoint kept beyond its last full batch. Then
        ``accepted = version · B + buffered`` (what the resumed trainer actually holds or has
        trained on) and ``running = 0``: in-flight and unsaved accepted trajectories died
        with the old processes and are counted as ``lost``, never as held capacity.
        """
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"staleness state lacks {missing}; pass a dict from state_dict()")
        restored_version = int(state["version"]) if version is None else version
        _check_count("buffered", buffered, minimum=0)
        ctl = cls(int(state["batch_size"]), state["max_lag"], restored_version)
        ctl.accepted = restored_version * ctl.batch_size + buffered
        ctl.rejected = int(state["rejected"])
        ctl.admitted = int(state["admitted"])
        # Everything admitted that is neither held by the trainer nor rejected is gone.
        ctl.lost = ctl.admitted - ctl.accepted - ctl.rejected
        if ctl.lost < 0:
            raise ValueError(
                f"restored trainer holds {ctl.accepted} trajectories (version {restored_version}"
                f" × B {ctl.batch_size} + {buffered} buffered) but the snapshot only admitted "
                f"{ctl.admitted} − {ctl.rejected} rejected: the snapshot is older than the "
                "trainer checkpoint; save both together"
            )
        ctl.lag_histogram = {int(k): int(c) for k, c in state.get("lag_histogram", {}).items()}
        return ctl


def _check_count(name: str, value: int, *, minimum: int) -> None:
    # numbers.Integral admits numpy/Arrow scalars; bool is an int but never a count.
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an int ≥ {minimum}, got {value!r}")
