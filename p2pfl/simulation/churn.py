"""Simulated churn: ``--fail node=3,round=10 --recover node=3,round=15 --join node=5,round=8``.

A failing node finishes round ``round`` and then disappears without a word (its sockets
close, as when a process is killed). A recovering node comes back once the live nodes
have all finished round ``round``: with the state it had when it failed (as if restored
from its per-round checkpoint), on the same endpoint. It greets its neighbours, learns
how far ahead they are and catches up by taking their model, exactly as a restarted
``p2pfl node`` does.

A joining node is not there at the start (its neighbours do not wait for it) and
starts afresh, from the initial model, once the others have finished round ``round``;
it greets its neighbours and catches up to their round and model like a restarted one.

:class:`Churn` runs all of this inside a simulation; the parsing and checks below it
need no torch (configs are validated without it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from p2pfl.errors import ConfigError
from p2pfl.node.peers import StartCondition

if TYPE_CHECKING:  # torch stays unimported: the config validates churn items with this module
    from p2pfl.node.node import Node
    from p2pfl.simulation.config import ExperimentConfig

log = logging.getLogger(__name__)

#: Starts node ``name`` from round ``start_round`` on its endpoint, linked to its neighbours.
Spawn = Callable[[str, int], Awaitable["Node"]]


class ChurnObserver(Protocol):
    """Who follows the rounds: a :class:`~p2pfl.simulation.recorder.MetricsRecorder`, or a
    cluster shard's forwarder to the driver's."""

    def node_down(self, name: str) -> None: ...
    def node_up(self, name: str) -> None: ...
    async def wait_for_round(self, round_: int) -> None: ...


@dataclass(frozen=True)
class Outage:
    """One node's crash (after round ``fail_round``) and optional recovery."""

    node: str
    fail_round: int
    recover_round: int | None = None  # rejoin once the others finished this round


class Churn:
    """Who of a simulation's nodes crashes, comes back or joins late, and every incarnation.

    :meth:`start` gives each node a task in the caller's task group (the group owns
    them): run to the end, or run until its crash, disappear, and come back as a new
    Node once the others have finished its recovery round; each joiner gets a task that
    waits for its round and then starts it afresh.
    """

    def __init__(
        self, names: Sequence[str], outages: dict[str, Outage], joins: dict[str, int],
        recorder: ChurnObserver, round_timeout: float,
    ) -> None:
        self.outages = outages
        self.joins = joins  # node -> the round after which it joins
        self._recorder = recorder
        self._round_timeout = round_timeout
        # a recovered node is a new Node; a joiner has none until it joins
        self.incarnations: dict[str, list[Node]] = {name: [] for name in names}

    @classmethod
    def from_config(cls, config: ExperimentConfig, names: Sequence[str], recorder: ChurnObserver) -> Churn:
        """The churn ``config`` asks for, checked against the nodes and rounds."""
        outages = parse_outages(config.fail, config.recover)
        check_outages(outages, names, config.rounds)
        joins = parse_joins(config.join, outages)
        check_joins(joins, names, config.rounds)
        return cls(names, outages, joins, recorder, config.round_timeout)

    @property
    def nodes(self) -> list[Node]:
        """Every Node that ran, incarnations of a node together, in node order."""
        return [node for lives in self.incarnations.values() for node in lives]

    @property
    def failed(self) -> list[str]:
        """The nodes that crashed and never came back."""
        return [name for name in self.incarnations if name in self.outages and self.outages[name].recover_round is None]

    def start(self, group: asyncio.TaskGroup, nodes: Sequence[Node], spawn: Spawn) -> None:
        """Run ``nodes`` (the ones there from the start) and the joiners in ``group``;
        ``spawn`` starts a node that comes back or joins."""
        for name in self.joins:
            self._recorder.node_down(name)  # until it joins: rounds close without it
        for node in nodes:
            self.incarnations[node.name].append(node)
            group.create_task(self._lifecycle(node, spawn), name=f"run-{node.name}")
        for name, after_round in self.joins.items():
            group.create_task(self._join(name, after_round, spawn), name=f"join-{name}")

    async def _lifecycle(self, node: Node, spawn: Spawn) -> None:
        outage = self.outages.get(node.name)
        if outage is None:
            await node.run()
            return
        await node.run(until_round=outage.fail_round)
        await node.close(graceful=False)  # a crash: no goodbye
        self._recorder.node_down(node.name)
        log.info("node %s crashed after round %d", node.name, outage.fail_round)
        if outage.recover_round is None:
            return
        await self._recorder.wait_for_round(outage.recover_round)
        log.info("node %s restarts after round %d", node.name, outage.recover_round)
        # back with the state it had (as restored from its checkpoint), same address
        revived = await self._start_late(spawn, node.name, outage.fail_round + 1)
        await revived.run()

    async def _join(self, name: str, after_round: int, spawn: Spawn) -> None:
        await self._recorder.wait_for_round(after_round)
        log.info("node %s joins after round %d", name, after_round)
        node = await self._start_late(spawn, name, 0)  # afresh: the initial model, round 0
        await node.run()

    async def _start_late(self, spawn: Spawn, name: str, start_round: int) -> Node:
        """Start ``name`` (back from a crash, or joining) and greet its neighbours."""
        node = await spawn(name, start_round)
        self.incarnations[name].append(node)
        self._recorder.node_up(name)
        with contextlib.suppress(TimeoutError):  # all neighbours down: go alone
            async with asyncio.timeout(self._round_timeout):
                await node.wait_until_ready(StartCondition.parse("min:1"), hello_interval=0.05)
        return node


def parse_outages(fail: Sequence[str], recover: Sequence[str]) -> dict[str, Outage]:
    """Parse ``node=N,round=R`` items; every recovery needs an earlier failure."""
    failures = {node: round_ for node, round_ in (_item("fail", item) for item in fail)}
    recoveries = {node: round_ for node, round_ in (_item("recover", item) for item in recover)}
    for node, round_ in recoveries.items():
        if node not in failures:
            raise ConfigError("recover", f"node {node} recovers but never fails: add fail = node={node},round=R")
        if round_ <= failures[node]:
            raise ConfigError(
                "recover", f"node {node} recovers at round {round_}, not after it fails at {failures[node]}"
            )
    return {node: Outage(node, failures[node], recoveries.get(node)) for node in failures}


def parse_joins(join: Sequence[str], outages: dict[str, Outage]) -> dict[str, int]:
    """Parse ``node=N,round=R`` items: node N joins once the others finished round R."""
    joins = dict(_item("join", item) for item in join)
    for node in joins:
        if node in outages:
            raise ConfigError("join", f"node {node} both joins and fails: give it one of the two")
    return joins


def check_joins(joins: dict[str, int], names: Sequence[str], rounds: int) -> None:
    for node, round_ in joins.items():
        _check_node_round("join", node, round_, names, rounds)
    if len(joins) >= len(names):
        raise ConfigError("join", "at least one node must be there from the start")


def check_outages(outages: dict[str, Outage], names: Sequence[str], rounds: int) -> None:
    for outage in outages.values():
        _check_node_round("fail", outage.node, outage.fail_round, names, rounds)
        if outage.recover_round is not None and outage.recover_round >= rounds - 1:
            raise ConfigError("recover", f"round {outage.recover_round} leaves nothing to rejoin (rounds = {rounds})")


def _check_node_round(field: str, node: str, round_: int, names: Sequence[str], rounds: int) -> None:
    """The node exists and the round leaves at least one more to run."""
    if node not in names:
        raise ConfigError(field, f"no node named {node!r}; nodes are {', '.join(names[:8])} ...")
    if not 0 <= round_ < rounds - 1:
        raise ConfigError(field, f"round {round_} of node {node} is not in 0..{rounds - 2}")


def _item(field: str, item: str) -> tuple[str, int]:
    parts = dict(part.split("=", 1) for part in item.split(",") if "=" in part)
    try:
        return parts["node"].strip(), int(parts["round"])
    except (KeyError, ValueError):
        raise ConfigError(field, f"{item!r} is not node=NAME,round=R (e.g. node=3,round=10)") from None
