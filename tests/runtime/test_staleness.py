"""The staleness controller against hand-worked capacities and simulated training loops."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from areal_flow.runtime.staleness import StalenessController


def test_capacity_follows_the_formula() -> None:
    ctl = StalenessController(batch_size=8, max_lag=2)
    assert ctl.capacity == (2 + 0 + 1) * 8  # 24, nothing admitted
    ctl.admit(4)
    ctl.admit(4)
    ctl.accept(3)
    assert (ctl.running, ctl.accepted) == (5, 3)
    assert ctl.capacity == 24 - (3 + 5)
    ctl.set_version(1)
    assert ctl.capacity == (2 + 1 + 1) * 8 - 8  # 24


def test_a_group_is_admitted_only_if_it_fits_whole() -> None:
    ctl = StalenessController(batch_size=8, max_lag=0)
    ctl.admit(5)
    assert ctl.capacity == 3
    assert not ctl.can_admit(4)  # the paper's "capacity > 0" would admit it and overshoot
    assert ctl.can_admit(3)
    with pytest.raises(RuntimeError, match="call can_admit first"):
        ctl.admit(4)
    assert ctl.running == 5  # the refused admit changed nothing


def test_rejections_give_capacity_back_acceptances_do_not() -> None:
    ctl = StalenessController(batch_size=4, max_lag=0)
    ctl.admit(4)
    assert ctl.capacity == 0
    ctl.reject(4)  # the filter dropped the whole group (uniform reward)
    assert ctl.capacity == 4 and ctl.rejected == 4
    ctl.admit(4)
    ctl.accept(4)
    assert ctl.capacity == 0  # accepted data is the trainer's; only a new version frees room
    ctl.set_version(1)
    assert ctl.capacity == 4


def test_unbounded_gate_never_closes() -> None:
    ctl = StalenessController(batch_size=2, max_lag=None)
    for _ in range(1000):
        ctl.admit(8)
    assert ctl.capacity == float("inf")
    assert ctl.running == 8000
    ctl.accept(8, versions=[0] * 8)
    assert ctl.metrics()["capacity"] == float("inf")


def test_starvation_is_an_error_not_a_hang() -> None:
    # B = 6 is not a multiple of n = 4: with η = 0 one group fits, the second never will.
    ctl = StalenessController(batch_size=6, max_lag=0)
    ctl.admit(4)
    assert not ctl.can_admit(4)  # still in flight: the gate may reopen
    ctl.accept(4)
    with pytest.raises(RuntimeError, match="multiple of the group size"):
        ctl.can_admit(4)


def test_bad_events_are_refused() -> None:
    ctl = StalenessController(batch_size=4, max_lag=1, version=3)
    with pytest.raises(ValueError, match="only 0 trajectories are in flight"):
        ctl.accept(1)
    ctl.admit(2)
    with pytest.raises(ValueError, match="one per trajectory"):
        ctl.accept(2, versions=[3])
    with pytest.raises(ValueError, match="newer than the trainer"):
        ctl.accept(1, versions=[4])
    with pytest.raises(ValueError, match="backwards"):
        ctl.set_version(2)
    with pytest.raises(ValueError, match="group_size"):
        ctl.can_admit(0)
    with pytest.raises(ValueError, match="max_lag"):
        StalenessController(batch_size=4, max_lag=-1)


def test_metrics_hold_counters_and_the_lag_histogram() -> None:
    ctl = StalenessController(batch_size=4, max_lag=2, version=5)
    ctl.admit(4)
    ctl.admit(4)
    ctl.accept(3, versions=[5, 4, 3])
    ctl.accept(1, versions=[4])
    ctl.reject(2)
    m = ctl.metrics()
    assert m["accepted"] == 4 and m["running"] == 2 and m["rejected"] == 2
    assert m["admitted"] == 8 and m["version"] == 5
    assert m["capacity"] == (2 + 5 + 1) * 4 - (4 + 2)
    assert (m["lag/0"], m["lag/1"], m["lag/2"]) == (1, 2, 1)
    assert m["lag_mean"] == pytest.approx((0 + 1 + 2 + 1) / 4)
    assert m["lag_max"] == 2


def test_resume_releases_capacity_held_by_lost_in_flight_trajectories() -> None:
    """AReaL #1388: after recovery, trajectories in flight at the crash kept holding capacity."""
    ctl = StalenessController(batch_size=4, max_lag=1)
    for version in range(3):  # three full training steps
        ctl.admit(4)
        ctl.accept(4, versions=[version] * 4)
        ctl.set_version(version + 1)
    ctl.admit(4)
    ctl.admit(4)
    ctl.accept(2)  # the trainer holds 2 of its next batch, 6 are in flight: then the crash
    assert ctl.capacity == (1 + 3 + 1) * 4 - (14 + 6)  # 0: the gate is shut
    state = json.loads(json.dumps(ctl.state_dict()))  # checkpoints are JSON

    resumed = StalenessController.from_state(state)
    assert resumed.running == 0
    assert resumed.accepted == 3 * 4  # version 3 × B: the 2 unsaved accepted ones died too
    assert resumed.capacity == (1 + 1) * 4  # as a fresh run at version 3 with nothing in flight
    assert resumed.lost == 8  # 6 in flight + 2 buffered but not checkpointed
    assert resumed.admitted == resumed.accepted + resumed.running + resumed.rejected + resumed.lost
    assert resumed.lag_histogram == {0: 12}
    # The resumed run really can refill the pipeline: η + 1 = 2 batches.
    resumed.admit(4)
    resumed.admit(4)
    assert not resumed.can_admit(4)


def test_resume_at_the_trainer_checkpoint_version_with_a_saved_buffer() -> None:
    ctl = StalenessController(batch_size=4, max_lag=2)
    ctl.admit(4)
    ctl.accept(4)
    ctl.set_version(1)
    ctl.admit(4)
    ctl.admit(4)
    ctl.accept(4)
    ctl.set_version(2)
    state = ctl.state_dict()  # snapshot taken after the trainer's checkpoint at version 1
    # The trainer checkpoint is at version 1 and kept 2 trajectories of its next batch.
    resumed = StalenessController.from_state(state, version=1, buffered=2)
    assert (resumed.version, resumed.accepted, resumed.running) == (1, 6, 0)
    assert resumed.capacity == (2 + 1 + 1) * 4 - 6
    # A fresh controller jumped to the recovered version (AReaL's bug before PR #1345) would
    # count nothing as accepted and admit 4 trajectories too many.
    naive = StalenessController(batch_size=4, max_lag=2, version=1)
    assert naive.capacity - resumed.capacity == 6
    with pytest.raises(ValueError, match="older than the trainer checkpoint"):
        StalenessController.from_state(state, version=9)
    with pytest.raises(ValueError, match="lacks"):
        StalenessController.from_state({"version": 1})


# ------------------------------------------------------------------------ simulated training


@dataclass
class Loop:
    """A source, generators and a trainer around one controller (generation is instant)."""

    ctl: StalenessController
    group_size: int
    rng: random.Random
    reject_prob: float = 0.0
    fifo: bool = True
    in_flight: list[int] = field(default_factory=list)  # version that sampled each group
    buffer: list[int] = field(default_factory=list)  # accepted, not yet trained: their versions
    trained_lags: list[int] = field(default_factory=list)
    admitted_per_version: dict[int, int] = field(default_factory=dict)
    running_at_step: list[int] = field(default_factory=list)

    def tick(self) -> None:
        if self.ctl.can_admit(self.group_size) and (not self.in_flight or self.rng.random() < 0.5):
            self.ctl.admit(self.group_size)
            v = self.ctl.version  # generators run the newest weights
            self.in_flight.append(v)
            self.admitted_per_version[v] = self.admitted_per_version.get(v, 0) + self.group_size
        elif self.in_flight:
            index = 0 if self.fifo else self.rng.randrange(len(self.in_flight))
            v = self.in_flight.pop(index)
            if self.rng.random() < self.reject_prob:
                self.ctl.reject(self.group_size)
            else:
                self.ctl.accept(self.group_size, versions=[v] * self.group_size)
                self.buffer += [v] * self.group_size
        b = self.ctl.batch_size
        if len(self.buffer) >= b:  # the trainer steps as soon as it has a batch
            batch, self.buffer = self.buffer[:b], self.buffer[b:]
            self.trained_lags += [self.ctl.version - v for v in batch]
            self.running_at_step.append(self.ctl.running)
            self.ctl.set_version(self.ctl.version + 1)
            bound = self.ctl.max_lag
            if bound is not None:
                assert self.ctl.accepted + self.ctl.running <= (bound + self.ctl.version + 1) * b


def run_loop(loop: Loop, steps: int) -> Loop:
    for _ in range(100_000):
        if loop.ctl.version >= steps:
            return loop
        loop.tick()
    raise AssertionError(f"the loop stalled at version {loop.ctl.version}")


def test_eta_zero_is_synchronous_training() -> None:
    ctl = StalenessController(batch_size=8, max_lag=0)
    loop = run_loop(Loop(ctl, group_size=4, rng=random.Random(0), reject_prob=0.3, fifo=False), 20)
    assert set(loop.trained_lags) == {0}  # every sample trained by the version that drew it
    assert set(loop.running_at_step) == {0}  # the trainer only steps when nothing is in flight
    for v in range(20):  # B accepted per version, plus re-admissions for rejected groups
        assert loop.admitted_per_version[v] >= 8
    assert ctl.metrics()["lag_max"] == 0


def test_eta_one_overlaps_generation_and_training() -> None:
    ctl = StalenessController(batch_size=8, max_lag=1)
    loop = run_loop(Loop(ctl, group_size=4, rng=random.Random(1)), 20)
    assert max(loop.trained_lags) == 1  # off-policy data appears, but never older than η
    assert max(loop.running_at_step) > 0  # generation continued while the trainer stepped


@settings(max_examples=60, deadline=None)
@given(
    eta=st.integers(0, 4),
    groups_per_batch=st.integers(1, 4),
    group_size=st.integers(1, 5),
    reject_prob=st.floats(0.0, 0.6),
    seed=st.integers(0, 10_000),
)
def test_in_order_completion_keeps_every_lag_within_eta(
    eta: int, groups_per_batch: int, group_size: int, reject_prob: float, seed: int
) -> None:
    ctl = StalenessController(batch_size=groups_per_batch * group_size, max_lag=eta)
    loop = run_loop(Loop(ctl, group_size, random.Random(seed), reject_prob, fifo=True), 8)
    assert max(loop.trained_lags) <= eta
    assert ctl.admitted == ctl.accepted + ctl.running + ctl.rejected


def test_out_of_order_completion_can_exceed_eta() -> None:
    """The gate bounds admitted volume; a long rollout overtaken by later ones lags more."""
    ctl = StalenessController(batch_size=2, max_lag=1)
    ctl.admit(1)  # the slow one, sampled at version 0
    for version in range(3):
        while ctl.can_admit(1):
            ctl.admit(1)
        ctl.accept(2, versions=[version, version])  # later rollouts overtake it
        ctl.set_version(version + 1)
    ctl.accept(1, versions=[0])
    assert ctl.metrics()["lag_max"] == 3  # with η = 1


def test_admission_waits_for_the_generators_to_serve_the_new_version() -> None:
    # η = 0, B = 8: the trainer stepped to version 1 but the generators still sample with 0.
    ctl = StalenessController(batch_size=8, max_lag=0)
    ctl.set_serving(0)
    ctl.admit(8)
    ctl.accept(8, [0] * 8)
    ctl.set_version(1)
    assert ctl.admission_version == 0 and ctl.capacity == 0
    assert not ctl.can_admit(8)  # closed, but not starved: a weight load will reopen it
    ctl.set_serving(1)
    assert ctl.capacity == 8 and ctl.can_admit(8)
    ctl.set_serving(0)  # a late, older report never moves it back
    assert ctl.admission_version == 1
    assert ctl.metrics()["serving"] == 1.0


def test_serving_is_capped_by_the_trainer_version() -> None:
    ctl = StalenessController(batch_size=4, max_lag=1)
    ctl.set_serving(3)  # cannot serve what the trainer has not made
    assert ctl.admission_version == 0 and ctl.capacity == 8
