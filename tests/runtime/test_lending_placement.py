"""Lending placement: the plan gives each generator replica an idle flag and the trainer a
loan of the generators' cores; where it cannot lend it places as disaggregated and says why;
the trainer's thread
count follows the flags before every layer's forward and backward, on the computing thread."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from areal_flow.graph import Machine, build
from areal_flow.lending import Borrower, CoreLoan, IdleFlag, layer_stack, lending_blockers
from areal_flow.loader import load_graph
from areal_flow.runtime.plan import make_plan
from areal_flow.spec import Graph

ROOT = Path(__file__).resolve().parents[2]
LENDING = ["placement=lending", "evaluation=null"]


def math_rl(*overrides: str) -> Graph:
    return load_graph(ROOT / "graphs" / "math_rl.py", list(overrides))


def test_the_trainer_borrows_the_generator_s_own_core(tmp_path: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores to lend one")
    graph = math_rl(*LENDING)
    plan = make_plan(graph, build(graph), tmp_path, "tcp://127.0.0.1:1")
    gen, trainer = plan.replica("gen", 0), plan.replica("trainer", 0)
    assert len(gen.cpus) == len(trainer.cpus) == 1 and gen.cpus != trainer.cpus
    assert gen.idle_flag == str(tmp_path / "lending" / "gen-0")
    assert trainer.loans == [CoreLoan(lender="gen/0", cores=gen.cpus, flag=gen.idle_flag)]
    for other in ("prompts", "reward", "filter", "publisher"):
        assert plan.replica(other, 0).idle_flag is None and plan.replica(other, 0).loans == []


def test_disaggregated_lends_nothing(tmp_path: Path) -> None:
    graph = math_rl("placement=disaggregated", "evaluation=null")
    plan = make_plan(graph, build(graph), tmp_path, "tcp://127.0.0.1:1")
    assert all(r.idle_flag is None and r.loans == [] for r in plan.replicas)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["launcher=ray"], "launcher 'ray' (lending needs 'local')"),
        (["nodes.trainer.ranks=2"], "'trainer' has ranks = 2"),
        (["nodes.trainer.resources.gpus=1"], "'trainer' trains on a GPU"),
        (["nodes.gen.resources.cpus=0.5"], "'gen' has no core of its own"),
    ],
)
def test_where_it_cannot_lend_it_places_as_disaggregated(
    overrides: list[str], says: str, tmp_path: Path
) -> None:
    # The same graph file runs under Ray, on GPUs, with several ranks: nothing lent, and why.
    graph = math_rl(*LENDING, *overrides)
    assert any(says in reason for reason in lending_blockers(graph)), lending_blockers(graph)
    if graph.launcher == "local":
        plan = make_plan(graph, build(graph, Machine(cpus=4, gpus=1)), tmp_path, "tcp://x:1")
        assert all(r.idle_flag is None and r.loans == [] for r in plan.replicas)
        same = make_plan(
            math_rl("placement=disaggregated", "evaluation=null", *overrides),
            build(graph, Machine(cpus=4, gpus=1)),
            tmp_path,
            "tcp://x:1",
        )
        assert [r.cpus for r in plan.replicas] == [r.cpus for r in same.replicas]
    assert lending_blockers(math_rl(*LENDING)) == []
    assert lending_blockers(math_rl("placement=disaggregated", *overrides)) == []


def tiny_stack() -> torch.nn.Module:
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Linear(8, 16)
            self.layers = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(3))
            self.head = torch.nn.ModuleList([torch.nn.Linear(16, 1)])  # the shorter list

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.embed(x)
            for layer in self.layers:
                x = torch.tanh(layer(x))
            return self.head[0](x).sum()

    return Net()


def test_the_layer_stack_is_the_longest_module_list() -> None:
    net = tiny_stack()
    assert layer_stack(net) == list(net.layers)
    plain = torch.nn.Linear(2, 2)
    assert layer_stack(plain) == [plain]


def test_threads_follow_the_flag_in_forward_and_backward(tmp_path: Path) -> None:
    flag = IdleFlag(tmp_path / "lending" / "gen-0")
    assert (tmp_path / "lending" / "gen-0").read_bytes() == b"0"  # starts busy
    borrower = Borrower(1, [CoreLoan(lender="gen/0", cores=[7, 8], flag=flag_path(tmp_path))])
    net = tiny_stack()
    borrower.attach(net)
    seen: list[tuple[str, int, int]] = []  # (pass, layer, threads) as each layer runs
    for index, layer in enumerate(net.layers):
        layer.register_forward_hook(
            lambda m, a, o, i=index: seen.append(("forward", i, torch.get_num_threads()))
        )
    computing: list[int] = []

    def step(idle_from_backward: bool) -> float:
        computing.append(threading.get_ident())
        seen.clear()
        flag.set(False)
        loss = net(torch.randn(4, 8))
        # The flag turns idle once backward reaches the last layer: layers 2, 1, 0 see it.
        out = net.layers[2].weight
        out.register_hook(lambda g: (flag.set(idle_from_backward), None)[1])
        hooks = [
            layer.weight.register_hook(
                lambda g, i=i: seen.append(("backward", i, torch.get_num_threads()))
            )
            for i, layer in enumerate(net.layers)
        ]
        loss.backward()
        for hook in hooks:
            hook.remove()
        borrower.release()  # as the trainer does at the end of each step, then takes the time
        return borrower.take_borrowed_s()

    with ThreadPoolExecutor(1) as compute:
        compute.submit(torch.set_num_threads, 1).result()
        borrowed = compute.submit(step, True).result()
        # Busy in forward: own thread only; idle from backward on: 1 + the lender's 2 cores.
        assert [t for p, _, t in seen if p == "forward"] == [1, 1, 1]
        assert [t for p, _, t in seen if p == "backward"][1:] == [3, 3]
        assert borrowed > 0
        assert compute.submit(torch.get_num_threads).result() == 1  # released after the step
        assert compute.submit(step, False).result() == 0.0  # never idle: nothing borrowed
        assert {t for _, _, t in seen} == {1}
    assert computing and threading.get_ident() not in computing
    borrower.close()
    flag.close()


def flag_path(tmp_path: Path) -> str:
    return str(tmp_path / "lending" / "gen-0")


def test_a_flag_not_written_yet_lends_nothing(tmp_path: Path) -> None:
    borrower = Borrower(2, [CoreLoan(lender="gen/0", cores=[1], flag=flag_path(tmp_path))])
    assert borrower.lent_cores() == 0
    flag = IdleFlag(Path(flag_path(tmp_path)))
    flag.set(True)
    assert borrower.lent_cores() == 1
    flag.set(False)
    assert borrower.lent_cores() == 0
    flag.close()
    borrower.close()
