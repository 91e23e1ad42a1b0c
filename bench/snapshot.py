"""The weight snapshot while another thread of the process runs Python: a loop of ``copy_`` per
tensor against one ``torch._foreach_copy_`` over all of them (what ``WeightWriter`` does).

Usage: ``python bench/snapshot.py [--rounds 5]``

Why: the trainer takes its snapshot on its compute thread while its event loop thread reads
batches, i.e. runs Python and holds the GIL. A ``copy_`` releases the GIL while it copies and must
take it back before the next one; with ~270 tensors that is ~270 waits for the other thread.
Model: SmolLM2-135M-Instruct's parameters, fp32 → bf16 buffers (math_rl's bf16 generator). The
copying thread is pinned to one core and the Python thread to another (as in a run: the trainer's
own core, the event loop elsewhere); each arm runs ``--rounds`` times with and without the Python
thread, and the table gives median and max milliseconds, and the loop's median over one call's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable

import torch


def python_spinner(stop: threading.Event, core: int | None) -> None:
    """Pure Python work: holds the GIL except when the interpreter hands it over."""
    if core is not None:
        os.sched_setaffinity(0, {core})
    count = 0
    while not stop.is_set():
        count += 1


def timed(fn: Callable[[], None], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="Snapshots per arm and setting.")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    from areal_flow.models import prepare_model

    torch.set_num_threads(1)
    cores = sorted(os.sched_getaffinity(0))
    copier, other = cores[0], (cores[1] if len(cores) > 1 else None)
    os.sched_setaffinity(0, {copier})
    model = AutoModelForCausalLM.from_pretrained(str(prepare_model("smollm2")))
    src = [p.detach() for p in model.parameters()]
    dst = [torch.empty_like(t, dtype=torch.bfloat16) for t in src]

    def loop() -> None:
        for d, s in zip(dst, src, strict=True):
            d.copy_(s)

    def one_call() -> None:
        torch._foreach_copy_(dst, src)

    print(f"{len(src)} tensors; copying on core {copier}, Python thread on core {other}")
    print("| Python thread | arm | median ms | max ms |\n|---|---|---|---|")
    for busy in (False, True):
        stop = threading.Event()
        spinner = threading.Thread(target=python_spinner, args=(stop, other), daemon=True)
        if busy:
            spinner.start()
        medians = {}
        for name, fn in (("loop of copy_", loop), ("one _foreach_copy_", one_call)):
            times = timed(fn, args.rounds)
            medians[name] = statistics.median(times)
            print(f"| {'running' if busy else 'none'} | {name} | {medians[name] * 1e3:.0f} | "
                  f"{max(times) * 1e3:.0f} |")  # fmt: skip
        stop.set()
        if busy:
            spinner.join()
        ratio = medians["loop of copy_"] / medians["one _foreach_copy_"]
        print(f"|  | loop / one call | {ratio:.1f}× | |")
    for d, s in zip(dst, src, strict=True):
        assert torch.equal(d, s.to(torch.bfloat16)), "the two arms must copy the same values"


if __name__ == "__main__":
    main()
