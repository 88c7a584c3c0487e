"""Putting nodes together: learners, config, link security, secure aggregation, aggregator.

The simulation and a deployed node process (``p2pfl node``) both build their nodes
here, so a simulated node is assembled exactly like a deployed one. They differ only in
where keys come from: fresh ones for every simulated node (everyone allow-listed), or a
member's key file and the consortium's allow-list for a deployed node. The bundled
example learner is built here too, so a rehearsal's member ``i`` learns exactly like
the simulation's node ``i``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import zmq

from p2pfl.attacks import attacker_aggregator
from p2pfl.data import Dataset
from p2pfl.errors import ConfigError
from p2pfl.learning.build import LearnerSettings
from p2pfl.learning.build import build_learners as build_learners_from
from p2pfl.learning.learner import Learner, TorchLearner
from p2pfl.node.node import Node, NodeConfig
from p2pfl.privacy.factory import privatize
from p2pfl.privacy.secagg import SecAggKeys, SecureAggregation, generate_keys
from p2pfl.security import AllowList, CurveSecurity, KeyPair, curve_authenticator, generate_keypair
from p2pfl.topology.schedule import GossipSchedule
from p2pfl.transport import ZmqTransport

__all__ = [
    "Links",
    "NodeSettings",
    "LearnerRecipe",
    "build_learners",
    "build_node",
    "member_links",
    "member_secure_aggregation",
    "node_config",
    "plain_links",
    "simulated_links",
    "simulated_secure_aggregation",
]

log = logging.getLogger(__name__)


class LearnerRecipe(LearnerSettings, Protocol):
    """Learning settings plus the optional differential privacy wrapped around each learner."""

    @property
    def dp(self) -> str: ...
    @property
    def rounds(self) -> int: ...
    @property
    def clip(self) -> float: ...
    @property
    def noise(self) -> float: ...
    @property
    def target_epsilon(self) -> float: ...
    @property
    def delta(self) -> float: ...


def build_learners(
    recipe: LearnerRecipe, dataset: Dataset, parts: list[np.ndarray], *, only: Collection[int] | None = None
) -> list[Learner]:
    """One learner per partition (see :func:`p2pfl.learning.build.build_learners`), each
    made differentially private when ``recipe.dp`` asks for it (needs Opacus); ``only``:
    just those partitions' learners, in index order."""
    if not recipe.dp:
        return build_learners_from(recipe, dataset, parts, only=only)

    def private(learner: TorchLearner, stream: int) -> Learner:
        return privatize(
            learner, recipe.dp, seed=stream, rounds=recipe.rounds, clip=recipe.clip,
            noise=recipe.noise, target_epsilon=recipe.target_epsilon, delta=recipe.delta,
        )

    return build_learners_from(recipe, dataset, parts, wrap=private, only=only)


class NodeSettings(Protocol):
    """The settings a node's round loop takes (an experiment's or a node.toml's)."""

    @property
    def rounds(self) -> int: ...
    @property
    def round_timeout(self) -> float: ...
    @property
    def mode(self) -> str: ...
    @property
    def staleness(self) -> float: ...
    @property
    def staleness_grace(self) -> int: ...
    @property
    def compress(self) -> str: ...
    @property
    def gossip(self) -> str: ...
    @property
    def seed(self) -> int: ...


def node_config(settings: NodeSettings, name: str, start_round: int = 0) -> NodeConfig:
    """The :class:`NodeConfig` of node ``name`` under ``settings``, from ``start_round`` on."""
    return NodeConfig(
        name=name, rounds=settings.rounds, round_timeout=settings.round_timeout,
        start_round=start_round, mode=settings.mode, staleness=settings.staleness,
        staleness_grace=settings.staleness_grace, compress=settings.compress,
        gossip=settings.gossip, seed=settings.seed,
    )


def build_node(
    settings: NodeSettings,
    name: str,
    learner: Learner,
    schedule: GossipSchedule,
    transport: ZmqTransport,
    *,
    start_round: int = 0,
    aggregator: Any = None,
    secure: SecureAggregation | None = None,
    **hooks: Any,
) -> Node:
    """A :class:`Node` running ``learner`` under ``settings``.

    Args:
        aggregator: how the node combines models (None: the node's default mean); an
            attacking learner's node keeps its own model instead (see
            :func:`~p2pfl.attacks.attacker_aggregator`).
        secure: the node's secure aggregation, or None.
        **hooks: ``executor``, ``observer``, ``presence``, ``checkpoint`` for :class:`Node`.
    """
    if aggregator is not None:
        hooks["aggregator"] = attacker_aggregator(aggregator, learner)
    return Node(node_config(settings, name, start_round), learner, schedule, transport, secure=secure, **hooks)


@dataclass(frozen=True)
class Links:
    """How the nodes of one ZeroMQ context secure their links.

    Attributes:
        security_for: a node's CurveZMQ setup by name (None: plain text).
        authenticator: the context's ZAP handler, to enter before any node binds (with
            plain text, a context that does nothing).
        allowlist: the public keys every node admits (None with plain text).
    """

    security_for: Callable[[str], CurveSecurity | None]
    authenticator: AbstractAsyncContextManager[Any] = field(default_factory=contextlib.nullcontext)
    allowlist: AllowList | None = None


def plain_links() -> Links:
    """Plain-text links: not encrypted, not authenticated."""
    return Links(lambda name: None)


def simulated_links(names: Iterable[str], context: zmq.Context) -> Links:
    """CurveZMQ among simulated nodes: a fresh key pair each, everyone allow-listed."""
    keypairs = {name: generate_keypair() for name in names}
    allowlist = AllowList(lambda: {name: pair.public for name, pair in keypairs.items()})
    return Links(
        lambda name: CurveSecurity(keypairs[name], allowlist), curve_authenticator(context, allowlist), allowlist
    )


def member_links(
    name: str, keypair: KeyPair, keys_loader: Callable[[], dict[str, str]], context: zmq.Context,
    *, key_file: str = "secret_key",
) -> Links:
    """CurveZMQ for a consortium member: its own key pair, the consortium's allow-list.

    Args:
        keys_loader: member name -> public key, re-read on every allow-list reload.
        key_file: where ``keypair`` came from, for the error message.

    Raises:
        ConfigError: (``secret_key``) the allow-list has another key for ``name``.
    """
    allowlist = AllowList(keys_loader)
    if allowlist.key_for(name) != keypair.public:
        raise ConfigError(
            "secret_key", f"the key in {key_file} is not the key the consortium lists for "
            f"{name!r}: use this member's own key file"
        )
    return Links(lambda _: CurveSecurity(keypair, allowlist), curve_authenticator(context, allowlist), allowlist)


def simulated_secure_aggregation(names: list[str]) -> Callable[[str], SecureAggregation]:
    """Per-node secure aggregation among simulated nodes: fresh X25519 keys per node,
    everyone's public keys known to all; a restarted node gets a fresh state with the
    same key."""
    keys = generate_keys(names)
    return lambda name: SecureAggregation(keys[name])


def member_secure_aggregation(
    name: str, keypair: KeyPair | None, allowlist: AllowList | None, signing_key_of: Callable[[str], str | None]
) -> SecureAggregation:
    """A member's secure aggregation: its identity derives from its Curve secret key, and
    the others' per-run keys are checked against ``signing_key_of`` (consortium.toml).

    Raises:
        ConfigError: (``secure_aggregation``) no key pair or allow-list (plain-text links).
    """
    if allowlist is None or keypair is None:
        raise ConfigError("secure_aggregation", "needs the consortium's public keys and this node's key pair")
    log.info("node %s: secure aggregation on (neighbours see only weighted sums of models)", name)
    return SecureAggregation(SecAggKeys.from_curve(name, keypair.secret, signing_key_of))
