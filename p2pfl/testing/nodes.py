"""Nodes for a test: one tiny node, or N connected ones over a topology, always stopped.

Everything here goes through the public API (``Node``, ``NodeConfig``, ``ZmqTransport``,
``StaticSchedule``), as a user's own test would::

    async with connected_nodes("ring", 4, rounds=3) as nodes:
        histories = await run_all(nodes, timeout=30)
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import zmq.asyncio

from p2pfl import (
    Learner,
    Node,
    NodeConfig,
    RoundMetrics,
    StaticSchedule,
    Topology,
    ZmqTransport,
    build_topology,
)
from p2pfl.testing.learners import tiny_learner

if TYPE_CHECKING:
    from p2pfl.security import LinkSecurity
    from p2pfl.topology.schedule import GossipSchedule

#: Where a node sends to a peer that is down: nobody listens on port 1.
DEAD_ENDPOINT = "tcp://127.0.0.1:1"
#: ``transport`` of :func:`connected_nodes` -> the address each node binds.
TRANSPORTS = ("inproc", "tcp")

_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(NodeConfig))
_run_ids = itertools.count()


def tiny_node(
    context: zmq.Context,
    name: str = "0",
    *,
    schedule: GossipSchedule | None = None,
    rounds: int = 5,
    round_timeout: float = 10.0,
    bind: str = "tcp://127.0.0.1:0",
    security: LinkSecurity | None = None,
    learner: Learner | None = None,
    **settings: Any,
) -> Node:
    """A node (not started) with a :func:`tiny_learner` seeded by its name.

    Args:
        context: the ZeroMQ context its transport uses.
        name: its name; a number, unless ``learner`` is given (it seeds the learner).
        schedule: whom it gossips with; by default a ring of 3 (nodes "0", "1", "2").
        rounds: rounds it runs.
        round_timeout: seconds it waits for its neighbours' models each round.
        bind: the endpoint it binds (a free loopback port by default).
        security: link security of its transport (plain text by default).
        learner: its learner instead of ``tiny_learner(int(name))``.
        **settings: any other :class:`NodeConfig` field (``limits``, ``mode``, ...) or
            keyword argument of :class:`Node` (``executor``, ``observer``, ``secure``, ...).
    """
    config = {k: v for k, v in settings.items() if k in _CONFIG_FIELDS}
    options = {k: v for k, v in settings.items() if k not in _CONFIG_FIELDS}
    return Node(
        NodeConfig(name=name, rounds=rounds, round_timeout=round_timeout, **config),
        learner if learner is not None else tiny_learner(int(name)),
        schedule if schedule is not None else StaticSchedule(build_topology("ring", 3)),
        ZmqTransport(context, bind, security=security),
        **options,
    )


@asynccontextmanager
async def connected_nodes(
    topology: Topology | str = "ring",
    n: int | None = 3,
    *,
    transport: str = "inproc",
    context: zmq.Context | None = None,
    schedule: GossipSchedule | None = None,
    down: Collection[str] = (),
    learners: Callable[[str], Learner] | None = None,
    security: Callable[[str], LinkSecurity] | None = None,
    **settings: Any,
) -> AsyncIterator[list[Node]]:
    """Start the nodes of a topology, each knowing its neighbours' endpoints; stop them all on exit.

    Every node is started (bound, listening) before any learns a peer's address, so the
    first hello or model finds its receiver. Leaving the block closes every node (a
    graceful "bye"), whatever happened inside, and then the context if it made one.

    Args:
        topology: a :class:`Topology` or a :func:`build_topology` spec.
        n: number of nodes, for a spec (ignored for a :class:`Topology`).
        transport: ``"inproc"`` (one shared context, fastest) or ``"tcp"`` (loopback,
            ephemeral ports; needed for link security).
        context: the ZeroMQ context to use; by default one of its own, terminated on exit.
        schedule: whom each node gossips with; ``StaticSchedule(topology)`` by default.
        down: names of nodes that are never started: their neighbours send to a dead
            endpoint and, in sync mode, wait ``round_timeout`` for them every round.
        learners: each node's learner by name; ``tiny_learner(int(name))`` by default.
        security: each node's link security by name (tcp only).
        **settings: passed to :func:`tiny_node` for every node (``rounds``,
            ``round_timeout``, other :class:`NodeConfig` fields, :class:`Node` options).

    Yields:
        The started nodes in topology order, the ``down`` ones left out.

    Raises:
        ValueError: an unknown ``transport`` or a ``down`` name not in the topology.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    topo = topology if isinstance(topology, Topology) else build_topology(topology, n)
    names = list(topo.names)
    unknown = sorted(set(down) - set(names))
    if unknown:
        raise ValueError(f"down names {unknown} are not in the topology ({', '.join(names)})")
    plan = schedule if schedule is not None else StaticSchedule(topo)
    run_id = f"{os.getpid()}-{next(_run_ids)}"
    ctx = context if context is not None else zmq.asyncio.Context()
    try:
        async with AsyncExitStack() as stack:
            nodes = []
            for name in names:
                if name in down:
                    continue
                node = tiny_node(
                    ctx, name, schedule=plan,
                    bind="tcp://127.0.0.1:0" if transport == "tcp" else f"inproc://p2pfl-testing-{run_id}-{name}",
                    security=security(name) if security is not None else None,
                    learner=learners(name) if learners is not None else None,
                    **settings,
                )
                nodes.append(await stack.enter_async_context(node))
            endpoints = {node.name: node.endpoint for node in nodes}
            for node in nodes:
                for peer in plan.peers(node.name):
                    node.add_peer(peer, endpoints.get(peer) or DEAD_ENDPOINT)
            yield nodes
    finally:
        if context is None:
            ctx.term()


async def run_all(nodes: Sequence[Node], *, timeout: float) -> dict[str, list[RoundMetrics]]:
    """Run every node's rounds together; returns each node's history by name.

    Raises:
        TimeoutError: they did not all finish within ``timeout`` seconds.
    """
    async with asyncio.timeout(timeout):
        histories = await asyncio.gather(*(node.run() for node in nodes))
    return {node.name: history for node, history in zip(nodes, histories, strict=True)}
