"""What typed control messages cost the driver: decoding heartbeats, the bulk of its traffic.

Decodes the same heartbeat frame (a replica's usual metrics: worker counters, four input edges,
node gauges) ``--n`` times with:
- ``json.loads``: the untyped decoder the control plane used before typed messages (baseline),
- ``messages.from_worker``: Pydantic's ``validate_json`` into the ``WorkerMessage`` union,
- msgspec Structs with the same fields, when msgspec is installed (the ``cpu`` extra has it).

Prints µs per decode and the ratio to the baseline, measured in the same run; and the encode
side (a worker builds and encodes one heartbeat) the same way.

    python bench/control.py [--n 100000]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import time
from collections.abc import Callable
from typing import Any

from areal_flow.runtime.messages import Heartbeat, encode, from_worker


def heartbeat_metrics() -> dict[str, float]:
    metrics = {
        f"edge.{edge}.{name}": float(edge)
        for edge in range(4)
        for name in ("depth", "received", "rejected")
    }
    for name in ("batches_in", "batches_out", "rows_in", "rows_out", "busy_s", "rss_mb"):
        metrics[name] = 1234.5
    for name in ("version", "steps", "loss", "gen_tokens_per_s", "samples", "update_s"):
        metrics[name] = 0.25
    return metrics


def untyped_decode(frame: bytes) -> dict[str, Any]:
    """The decoder the control plane had before typed messages."""
    message = json.loads(frame)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError("control message must be a JSON object with a 'type'")
    return message


def msgspec_decoder() -> Callable[[bytes], Any] | None:
    if importlib.util.find_spec("msgspec") is None:
        return None
    import msgspec

    class MsgspecHeartbeat(msgspec.Struct, tag="heartbeat", tag_field="type"):
        metrics: dict[str, float]

    class MsgspecReady(msgspec.Struct, tag="ready", tag_field="type"):
        pass

    return msgspec.json.Decoder(MsgspecHeartbeat | MsgspecReady).decode


def per_call_us(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="Decodes (and encodes) per arm.")
    args = parser.parse_args()
    metrics = heartbeat_metrics()
    frame = encode(Heartbeat(metrics=metrics))
    print(f"heartbeat: {len(metrics)} metrics, {len(frame)} bytes, {args.n} decodes per arm")
    arms: dict[str, Callable[[bytes], Any]] = {
        "json.loads (untyped, baseline)": untyped_decode,
        "pydantic from_worker": from_worker,
    }
    decoder = msgspec_decoder()
    if decoder is not None:
        arms["msgspec Struct"] = decoder
    else:
        print("msgspec is not installed: its arm is left out")
    base = 0.0
    for name, decode in arms.items():
        us = per_call_us(functools.partial(decode, frame), args.n)
        base = base or us
        print(f"decode {name:32s} {us:7.2f} µs   ×{us / base:.2f} of baseline")
    untyped = per_call_us(
        lambda: json.dumps({"type": "heartbeat", "metrics": metrics}, separators=(",", ":")),
        args.n,
    )
    typed = per_call_us(lambda: encode(Heartbeat(metrics=metrics)), args.n)
    print(f"encode {'json.dumps (untyped, baseline)':32s} {untyped:7.2f} µs")
    print(f"encode {'pydantic Heartbeat + encode':32s} {typed:7.2f} µs   ×{typed / untyped:.2f}")


if __name__ == "__main__":
    main()
