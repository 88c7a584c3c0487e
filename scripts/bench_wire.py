#!/usr/bin/env python3
"""Wire throughput of one link over tcp loopback: our path against raw pyzmq (issue 14).

Ours: ``wire.encode`` -> :class:`~p2pfl.transport.ZmqTransport` DEALER -> ROUTER ->
``wire.decode`` with the schema, size bounds and the NaN/Inf check, as a node receives
a model. Raw: a pyzmq PUSH/PULL pair sending the same bytes as one zero-copy frame, and
nothing done with them. Each message is sent once the previous one was received
(what a round does: one model per link), ``--messages`` times, best of ``--repeats``.

    python scripts/bench_wire.py                   # a 100 MB model (25M float32)
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np
import zmq

from p2pfl import wire
from p2pfl.transport import Incoming, ZmqTransport


def model(mb: int) -> dict[str, np.ndarray]:
    """Four tensors, ``mb`` MB in all (a wide MLP's shape: one layer holds most)."""
    rng = np.random.default_rng(0)
    total = mb * 2**20 // 4
    sizes = {"l1.weight": total * 7 // 8, "l1.bias": 4096, "l2.weight": total // 8 - 8192, "l2.bias": 4096}
    return {name: rng.standard_normal(n, dtype=np.float32) for name, n in sizes.items()}


async def ours(tensors: dict[str, np.ndarray], messages: int) -> float:
    """Seconds for ``messages`` models: encode, send, receive, decode and validate."""
    context = zmq.Context()
    schema = wire.schema_of(tensors)
    limits = wire.WireLimits(max_message_bytes=2 * sum(a.nbytes for a in tensors.values()))
    receiver, sender = ZmqTransport(context, "tcp://127.0.0.1:0"), ZmqTransport(context, "tcp://127.0.0.1:0")
    got: asyncio.Queue[wire.Message] = asyncio.Queue()

    def handle(incoming: Incoming) -> None:
        got.put_nowait(wire.decode(incoming.frames, schema=schema, limits=limits))

    endpoint = receiver.start()
    receiver.listen(handle)
    sender.start()
    sender.connect("b", endpoint)
    try:
        started = time.perf_counter()
        for round_ in range(messages):
            frames = wire.encode(kind=wire.Kind.MODEL, sender="a", round=round_, samples=1, tensors=tensors)
            if not sender.send("b", frames):
                raise RuntimeError("queue full")
            message = await got.get()
            assert message.round == round_
        return time.perf_counter() - started
    finally:
        sender.close()
        receiver.close()
        context.term()


def raw(tensors: dict[str, np.ndarray], messages: int) -> float:
    """Seconds for ``messages`` times the same bytes over PUSH/PULL, one frame each."""
    payload = np.concatenate([a.reshape(-1) for a in tensors.values()]).view(np.uint8)
    context = zmq.Context()
    pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    try:
        started = time.perf_counter()
        for _ in range(messages):
            push.send(memoryview(payload), copy=False)
            frame = pull.recv(copy=False)
            assert len(frame) == payload.nbytes
        return time.perf_counter() - started
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        context.term()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=100, help="model size in MB (default: 100)")
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tensors = model(args.mb)
    nbytes = sum(a.nbytes for a in tensors.values())
    best_ours = min(asyncio.run(ours(tensors, args.messages)) for _ in range(args.repeats))
    best_raw = min(raw(tensors, args.messages) for _ in range(args.repeats))
    rate_ours = args.messages * nbytes / best_ours / 2**20
    rate_raw = args.messages * nbytes / best_raw / 2**20
    print("| path | MB/s | of raw |")
    print("|---|---:|---:|")
    print(f"| raw pyzmq PUSH/PULL | {rate_raw:,.0f} | 100 % |")
    print(f"| p2pfl encode, send, receive, decode | {rate_ours:,.0f} | {100 * rate_ours / rate_raw:.0f} % |")


if __name__ == "__main__":
    main()
