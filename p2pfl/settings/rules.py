"""Rules over several setting keys: each lives here once, run by ``validate`` on the
configs that have all of its keys."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from p2pfl.errors import ConfigError

_Rule = Callable[[Mapping[str, Any]], None]
RULES: list[tuple[tuple[str, ...], _Rule]] = []


def _rule(*keys: str) -> Callable[[_Rule], _Rule]:
    """Register a rule run by :func:`validate` on configs that have all of ``keys``."""
    def register(check: _Rule) -> _Rule:
        RULES.append((keys, check))
        return check

    return register


@_rule("consortium", "peers")
def _where_the_peers_are(v: Mapping[str, Any]) -> None:
    if not v["consortium"] and not v["peers"]:
        raise ConfigError("consortium", "give a consortium file, or a [peers] table name = endpoint")


@_rule("insecure", "secret_key")
def _keys_unless_insecure(v: Mapping[str, Any]) -> None:
    if not v["insecure"] and not v["secret_key"]:
        raise ConfigError("secret_key", "give the key file, or run with --insecure (plain text)")


@_rule("curve", "transport")
def _curve_needs_a_network(v: Mapping[str, Any]) -> None:
    if v["curve"] and v["transport"] == "inproc":
        raise ConfigError("curve", "CurveZMQ needs a network transport: use transport = \"tcp\" or \"ipc\"")


@_rule("slow_nodes", "slowdown", "nodes")
def _slow_nodes(v: Mapping[str, Any]) -> None:
    slow, slowdown, nodes = v["slow_nodes"], v["slowdown"], v["nodes"]
    if nodes is not None and slow > nodes:
        raise ConfigError("slow_nodes", f"at most nodes = {nodes}, got {slow}")
    if slow and slowdown == 1:
        raise ConfigError("slowdown", f"{slow} slow nodes need slowdown > 1, e.g. slowdown = 5")
    if slowdown != 1 and not slow:
        raise ConfigError("slow_nodes", f"slowdown {slowdown} applies to slow_nodes >= 1")


@_rule("attack", "attackers", "nodes")
def _attackers(v: Mapping[str, Any]) -> None:
    attack, attackers, nodes = v["attack"], v["attackers"], v["nodes"]
    if attackers and not attack:
        raise ConfigError("attack", f"{attackers} attackers need an attack, e.g. attack = \"scale:100\"")
    if attack and not attackers:
        raise ConfigError("attackers", f"attack {attack!r} needs attackers >= 1")
    if nodes is not None and attackers > nodes - 1:
        raise ConfigError("attackers", f"at most nodes - 1 = {nodes - 1} (one node must be honest), got {attackers}")


@_rule("dp", "target_epsilon", "noise")
def _privacy(v: Mapping[str, Any]) -> None:
    dp, target, noise = v["dp"], v["target_epsilon"], v["noise"]
    if not dp:
        if target or noise:
            key = "target_epsilon" if target else "noise"
            raise ConfigError(key, "only applies with differential privacy: set dp = \"sample\" or \"update\"")
        return
    if target and noise:
        raise ConfigError("noise", "give noise or target_epsilon, not both (the target picks the noise)")
    if not (target or noise):
        raise ConfigError("target_epsilon", f"dp = {dp!r} needs target_epsilon > 0 or noise > 0 (else epsilon is infinite)")


@_rule("compress", "secure_aggregation")
def _compress_not_secure(v: Mapping[str, Any]) -> None:
    if v["compress"] and v["secure_aggregation"]:
        raise ConfigError("compress", "does not compose with secure aggregation (masked fixed point): "
                          "leave compress empty or turn secure_aggregation off")


@_rule("secure_aggregation")
def _secure_aggregation(v: Mapping[str, Any]) -> None:
    """What secure aggregation needs, of the keys this config has."""
    if not v["secure_aggregation"]:
        return
    if v.get("mode", "sync") != "sync":
        raise ConfigError("secure_aggregation", "needs the round barrier: use mode = \"sync\"")
    if v.get("aggregator", "mean") != "mean":
        raise ConfigError(
            "secure_aggregation", f"aggregator {v['aggregator']!r} needs each neighbour's model; secure "
            "aggregation reveals only their sum: use aggregator = \"mean\"",
        )
    if v.get("fanout"):
        raise ConfigError(
            "secure_aggregation", "needs a static topology (fanout = 0): random peers give neighbourhoods under 3"
        )
    if v.get("attack"):
        raise ConfigError("secure_aggregation", "attack simulations are not supported with secure aggregation")
    if "secret_key" in v and (v["insecure"] or not v["secret_key"]):
        raise ConfigError(
            "secure_aggregation", "derives its pairwise masks from the Curve key pair: give secret_key, not --insecure"
        )


@_rule("gossip")
def _choco(v: Mapping[str, Any]) -> None:
    """What CHOCO gossip needs, of the keys this config has."""
    if not v["gossip"].startswith("choco"):
        return
    if v.get("secure_aggregation"):
        raise ConfigError("gossip", "choco does not compose with secure aggregation (it needs each neighbour's "
                          "difference): use gossip = \"plain\" or turn secure_aggregation off")
    if v.get("aggregator", "mean") != "mean":
        raise ConfigError("gossip", f"choco keeps public copies and takes a consensus step, not aggregator "
                          f"{v['aggregator']!r}: use aggregator = \"mean\" or gossip = \"plain\"")
    if v.get("fanout"):
        raise ConfigError("gossip", "choco keeps a public copy per neighbour: it needs a static topology (fanout = 0)")
    if v.get("attack"):
        raise ConfigError("gossip", "attack simulations are not supported with choco: use gossip = \"plain\"")
