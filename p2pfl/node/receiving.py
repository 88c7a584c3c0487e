"""A node's receiving side: every incoming message is checked, then handled by its kind.

Dispatch is a table from :class:`~p2pfl.wire.Kind` to a handler: the node's own kinds
(greetings, goodbyes, catch-up) and whatever its exchange owns (secure aggregation's
reveals). A refused message raises :class:`~p2pfl.errors.WireError`, counted by reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from p2pfl import wire
from p2pfl.errors import NodeError, WireError
from p2pfl.node.catchup import CatchUp
from p2pfl.node.exchange import Exchange, Handler
from p2pfl.node.gossip_choco import CHOCO_META
from p2pfl.node.link import NodeLink
from p2pfl.node.records import NodeConfig
from p2pfl.settings import parse_gossip
from p2pfl.transport import Incoming
from p2pfl.wire import Kind, Message
from p2pfl.wire.kinds import CHOCO_CONTROL_KINDS

log = logging.getLogger(__name__)


class Receiver:
    """Checks and routes a node's incoming messages.

    Args:
        config: the node's settings (name, mode, rounds).
        link: the node's transport, neighbours, inbox and counters.
        exchange: the node's exchange: it takes the models and its own kinds.
        catch_up: answers "sync-request" and keeps "sync" replies.
        schema: the local model's tensors, which every model must match.
        limits: size bounds for incoming messages.
    """

    def __init__(
        self,
        config: NodeConfig,
        link: NodeLink,
        exchange: Exchange,
        catch_up: CatchUp,
        schema: Mapping[str, wire.TensorSpec],
        limits: wire.WireLimits,
    ) -> None:
        self.name = config.name
        self._config = config
        self._link = link
        self._exchange = exchange
        self._catch_up = catch_up
        self._schema = schema
        self._limits = limits
        self._codec = wire.parse_codec(config.compress)  # checked by the config already
        self._gossip = parse_gossip(config.gossip)[0]
        self._handlers = self._dispatch_table()

    def _dispatch_table(self) -> dict[str, Handler]:
        """Kind -> handler: the node's own kinds, then whatever its exchange owns."""
        table: dict[str, Handler] = {Kind.MODEL: self._on_model, Kind.MASKED_MODEL: self._on_model}
        control: dict[Kind, Handler] = {
            Kind.HELLO: self._on_hello,
            Kind.BYE: self._on_bye,
            Kind.SYNC_REQUEST: self._catch_up.answer,
            Kind.SYNC: self._catch_up.offer,
            **dict.fromkeys(CHOCO_CONTROL_KINDS, _refuse_choco),
            **self._exchange.handlers(),
        }
        for kind, handler in control.items():
            table[kind] = self._from_neighbour(handler)
        missing = set(Kind) - table.keys()
        if missing:  # a kind added to the wire needs a handler (or an explicit refusal)
            raise NodeError(f"node {self.name}: no handler for message kinds {sorted(missing)}")
        return table

    def receive(self, incoming: Incoming) -> None:
        """Handle one message from the socket; never raises (a peer must not stop the node)."""
        stats = self._link.stats
        stats.bytes_received += incoming.nbytes
        try:
            self._accept(incoming)
        except WireError as exc:
            self.count_rejection(exc.reason, str(exc))
        except Exception:
            self.count_rejection("internal_error", "unexpected error handling a message")
            log.exception("node %s: error handling a message; message dropped", self.name)

    def _accept(self, incoming: Incoming) -> None:
        # [security hook] With link security on, the authenticated key (checked against the
        # current allow-list, so a revocation reaches open connections too) decides who
        # sent the message, before any byte of it is parsed; the header must agree.
        security = self._link.transport.security
        member = None
        if security is not None:
            member = security.member_for(incoming.user_id)
            if member is None:
                raise WireError("unauthenticated", "the link's key is not (or no longer) on the allow-list")
        message = wire.decode(
            incoming.frames, schema=self._schema, limits=self._limits, kind_schemas=self._exchange.kind_schemas,
            codec=self._codec,
        )
        if member is not None and message.sender != member:
            raise WireError(
                "sender_mismatch", f"header claims sender {message.sender!r}, the link is {member!r}'s"
            )
        if message.sender == self.name:
            raise WireError("unknown_sender", "message claims to come from this node itself")
        self._handlers[message.kind](message)
        self._link.stats.messages_accepted += 1

    def _on_model(self, message: Message) -> None:
        """A model of a round (plain or masked): checked here, kept by the exchange."""
        self._exchange.admit(message)
        config, inbox = self._config, self._link.inbox
        theirs = "async" if message.meta.get("async") is True else "sync"
        if theirs != config.mode:
            raise WireError(
                "mode_mismatch",
                f"{message.sender} runs {theirs} gossip, this node {config.mode}: give every member the same mode",
            )
        theirs = "choco" if CHOCO_META in message.meta else "plain"
        if theirs != self._gossip:
            raise WireError(
                "gossip_mismatch",
                f"{message.sender} runs {theirs} gossip, this node {self._gossip}: give every member the same gossip",
            )
        if message.round >= config.rounds:
            raise WireError("future_round", f"round {message.round} >= last round {config.rounds}")
        expected = (
            self._link.plan(self.name, message.round).weights
            if message.round >= inbox.current_round
            else self._link.peers.peers  # stale, but still news of where the sender is
        )
        if message.sender not in expected:
            raise WireError("unknown_sender", f"{message.sender!r} is not a neighbour in round {message.round}")
        self._heard(message)
        # a replier's model of the round a catch-up joins is too far ahead for the inbox yet
        if not (message.round > inbox.current_round + inbox.max_rounds_ahead
                and self._catch_up.keep_model(message)):
            self._exchange.offer(message)

    def _from_neighbour(self, handler: Handler) -> Handler:
        """``handler`` behind the checks every message but a model gets."""

        def checked(message: Message) -> None:
            rounds = self._config.rounds
            if message.sender not in self._link.peers.peers:
                raise WireError("unknown_sender", f"{message.kind} from {message.sender!r}, not a neighbour")
            if message.round > rounds:  # no honest peer is past the last round
                raise WireError("future_round", f"{message.kind} claims round {message.round} > {rounds}")
            self._heard(message)
            handler(message)

        return checked

    def _heard(self, message: Message) -> None:
        inbox = self._link.inbox
        if self._link.peers.heard(message.sender, message.round):
            log.info("node %s: %s is back (at round %d)", self.name, message.sender, message.round)
            inbox.poke()  # a round under way waits for it again
        elif message.round > inbox.current_round:
            inbox.poke()  # a round under way stops waiting for a peer that moved past it

    def _on_hello(self, message: Message) -> None:
        if message.meta.get("finished") is True:
            self._finished(message)
        # Answer a greeting so the greeter learns we are up; never answer an answer, and
        # at most twice a second per peer, so hellos cannot be used to make us flood.
        if not message.meta.get("reply", False) and self._link.may_answer(message.sender, "hello"):
            # A greeting means the peer (re)started: open a fresh link, which also drops
            # whatever stale rounds were queued for its previous life (and inproc links
            # do not reconnect by themselves).
            self._link.transport.disconnect(message.sender)
            self._exchange.restarted(message.sender)
            self._link.greet([message.sender], reply=True)

    def _on_bye(self, message: Message) -> None:
        if message.meta.get("finished") is True:
            self._finished(message)
            return
        self._link.peers.suspect(message.sender)
        self._link.inbox.poke()
        log.info("node %s: %s says it is leaving; not waiting for it", self.name, message.sender)

    def _finished(self, message: Message) -> None:
        """The sender completed the run (its last round is the message's): never wait for it again."""
        if self._link.peers.finish(message.sender, message.round):
            self._link.inbox.poke()
            log.info("node %s: %s finished the run (last round %d); not waiting for it",
                     self.name, message.sender, message.round)

    def count_rejection(self, reason: str, detail: str) -> None:
        rejected = self._link.stats.rejected
        rejected[reason] += 1
        count = rejected[reason]
        # Log the first few of each reason, then sparsely: a flood must not flood the log.
        if count <= 5 or count % 1000 == 0:
            log.warning("node %s rejected a message (%s, #%d): %s", self.name, reason, count, detail)


def _refuse_choco(message: Message) -> None:
    raise WireError("choco_off", f"a {message.kind} message, but this node runs plain gossip")
