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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from p2pfl.errors import ConfigError


@dataclass(frozen=True)
class Outage:
    """One node's crash (after round ``fail_round``) and optional recovery."""

    node: str
    fail_round: int
    recover_round: int | None = None  # rejoin once the others finished this round


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
