"""CHOCO gossip (``gossip = "choco[:GAMMA]"``): compressed differences to public copies.

CHOCO-SGD (Koloskova, Stich & Jaggi, 2019, Algorithm 1). Every node ``i`` keeps a public
copy ``x̂_i`` of its model, known bit for bit to its neighbours, and their copies ``x̂_j``.
After local training gives ``x_i``, it sends ``q_i = Q(x_i − x̂_i)`` (``Q`` the ``compress``
codec, the identity without one), everyone adds ``q_j`` to ``x̂_j`` and each node steps
towards its neighbours' copies: ``x_i ← x_i + γ Σ_j w_ij (x̂_j − x̂_i)``, with the round's
mixing weights. Sparse codecs work here because what is dropped stays in ``x_i − x̂_i``
for the next message (CHOCO needs no error feedback). With ``Q`` the identity and
``γ = 1`` it is plain gossip.

Copies start equal to the node's initial model (a run's nodes share one seeded init),
not the paper's zeros: the first differences are then small. A copy out of step (a
sequence gap, a CRC that differs, a restart) leaves the step and is asked for again in
full (``choco-resync`` → ``choco-state``) once per round until it arrives
(:mod:`p2pfl.node.choco_copies`). Sync mode waits for the round's differences as plain
gossip waits for models; async mode (``gossip_async``'s clock) applies whatever arrived,
in order per sender.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from p2pfl import wire
from p2pfl.errors import WireError
from p2pfl.node.choco_copies import Event, PublicCopies, advance, consensus, difference, fingerprint
from p2pfl.node.exchange import Exchanged, Frames, Handler, Link, Trained, refuse_secure_kinds
from p2pfl.wire import Codec, Encoded, Kind, Message, ModelSchema

if TYPE_CHECKING:
    from p2pfl.learning.learner import Weights

#: ``meta`` key of CHOCO's differences and states: ``{"seq": int, "crc": int}``
CHOCO_META = "choco"
#: events queued per neighbour (each a dense model) before its copy is given up and
#: resent in full instead: bounds memory when a neighbour runs far ahead (async)
MAX_QUEUED = 8
#: a full copy goes to one neighbour at most once per own difference or this many seconds
RESYNC_INTERVAL = 1.0
#: rounds before a request not yet answered is repeated (the answer may have been lost),
#: and never within twice the answerer's interval: an honest repeat is never refused
ASK_AGAIN = 2


def choco_meta(message: Message) -> tuple[int, int]:
    """``(seq, crc)`` of a difference or state.

    Raises:
        WireError: ``gossip_mismatch`` without it (a plain gossip node's model),
            ``bad_header`` when malformed.
    """
    meta = message.meta.get(CHOCO_META)
    if meta is None:
        raise WireError("gossip_mismatch", f"{message.sender} runs plain gossip, this node choco")
    seq, crc = (meta.get("seq"), meta.get("crc")) if isinstance(meta, dict) else (None, None)
    if type(seq) is not int or type(crc) is not int or not (0 <= seq < 2**62 and 0 <= crc < 2**32):
        raise WireError("bad_header", f"meta.{CHOCO_META} must be {{seq: int >= 0, crc: uint32}}")
    return seq, crc


class ChocoGossip:
    """CHOCO gossip's exchange: implements :class:`~p2pfl.node.exchange.Exchange`.

    Args:
        link: the node's name, plans, sending and round inbox.
        gamma: the consensus step γ in (0, 1].
        codec: ``Q`` (None: the differences travel dense).
        seed: seeds the codec's randomness (int8's rounding, randk's masks).
        initial: the node's initial model, where every public copy starts.
        mode: ``"sync"`` (wait for the round's differences) or ``"async"``.
    """

    model_kind = Kind.MODEL
    kind_schemas: Mapping[str, ModelSchema] | None = None

    def __init__(
        self, link: Link, *, gamma: float, codec: Codec | None, seed: int, initial: Weights, mode: str
    ) -> None:
        self._link = link
        self._gamma = gamma
        self._codec = codec
        self._rng = np.random.default_rng(seed)
        self.barrier = mode == "sync"
        self._async_meta = {} if self.barrier else {"async": True}
        self.copies = PublicCopies(initial)  # the worker's (the consensus step)
        own = {name: np.array(array) for name, array in initial.items()}
        # (next seq, own public copy, its crc): replaced as one, read by resync answers
        self._own: tuple[int, dict[str, np.ndarray], int] = (0, own, fingerprint(own))
        self._queues: dict[str, list[Event]] = {}  # the loop's: what arrived, not applied yet
        self._last: dict[str, int] = {}  # newest difference accepted per sender
        self._clocks: dict[str, int] = {}  # async: newest clock per sender
        self._asked: dict[str, int] = {}  # full copies requested and not yet arrived: round asked
        self._asked_at: dict[str, float] = {}  # ... and when (monotonic)
        self._answered: dict[str, tuple[int, float]] = {}  # own seq and time of the last answer
        self._round = 0

    def handlers(self) -> Mapping[Kind, Handler]:
        return {**refuse_secure_kinds(), Kind.CHOCO_RESYNC: self._on_resync, Kind.CHOCO_STATE: self._on_state}

    def admit(self, message: Message) -> None:
        if message.kind != Kind.MODEL:
            raise WireError("secagg_off", "a masked model, but secure aggregation is off here")
        choco_meta(message)

    def offer(self, message: Message) -> None:
        seq, crc = choco_meta(message)
        sender = message.sender
        last = self._last.get(sender)
        if last is not None and seq <= last:
            raise WireError("stale_round", f"difference {seq} from {sender}, already had {last}")
        if self.barrier:
            try:
                self._link.inbox.offer(message)  # for the round's waiting only
            except WireError as exc:
                if exc.reason != "stale_round":
                    raise
                # late for its round but still a difference of the copy: applied next round
        self._last[sender] = seq
        self._clocks[sender] = max(message.round, self._clocks.get(sender, 0))
        self._enqueue(Event("diff", sender, seq, message.round, message.tensors, crc, message.nbytes))

    def restarted(self, peer: str) -> None:
        # its copy of itself restarts (from its checkpoint, numbered from 0)
        self._queues[peer] = [Event("reset", peer)]
        self._last.pop(peer, None)
        self._clocks.pop(peer, None)

    def sent(self, round_: int) -> Frames | None:
        return None  # a difference applies once; a neighbour catching up resynchronises

    def _enqueue(self, event: Event) -> None:
        queue = self._queues.setdefault(event.sender, [])
        if len(queue) >= MAX_QUEUED:  # a copy nobody applies (the node is stuck): give it up
            queue[:] = [Event("reset", event.sender)]
        queue.append(event)

    def _drain(self, round_: int | None) -> list[Event]:
        """The queued events up to the first difference of a round after ``round_`` (all
        of them when None), in arrival order per sender."""
        taken: list[Event] = []
        for sender in sorted(self._queues):
            queue = self._queues[sender]
            cut = next((i for i, e in enumerate(queue) if round_ is not None and e.kind == "diff"
                        and e.round > round_), len(queue))
            taken.extend(queue[:cut])
            del queue[:cut]
        return taken

    # -- resynchronising -----------------------------------------------------------------

    def _on_resync(self, message: Message) -> None:
        now, (seq, own, crc) = time.monotonic(), self._own
        last_seq, last_time = self._answered.get(message.sender, (-1, -RESYNC_INTERVAL))
        if last_seq == seq and now - last_time < RESYNC_INTERVAL:
            raise WireError("choco_rate_limited", f"{message.sender} asked for the same full copy within {RESYNC_INTERVAL} s")
        self._answered[message.sender] = (seq, now)
        frames = wire.encode(
            kind=Kind.CHOCO_STATE, sender=self._link.name, round=self._round, samples=0, tensors=own,
            meta={CHOCO_META: {"seq": seq, "crc": crc}},
        )
        self._link.send([message.sender], frames, control=True)

    def _on_state(self, message: Message) -> None:
        sender = message.sender
        if sender not in self._asked:
            raise WireError("choco_unasked", f"a full CHOCO copy from {sender}, not asked for")
        seq, crc = choco_meta(message)
        if fingerprint(message.tensors) != crc:
            raise WireError("choco_crc", f"{sender}'s full copy does not match its CRC")
        del self._asked[sender]
        # differences sent before it are in it: only later ones count now
        self._last[sender] = max(self._last.get(sender, -1), seq - 1)
        self._enqueue(Event("state", sender, seq, message.round, message.tensors, crc, message.nbytes))

    def _ask(self, peers: list[str]) -> None:
        frames = wire.encode(kind=Kind.CHOCO_RESYNC, sender=self._link.name, round=self._round, samples=0,
                             tensors={})
        for peer in peers:
            now = time.monotonic()
            if (self._round - self._asked.get(peer, self._round - ASK_AGAIN) >= ASK_AGAIN
                    and now - self._asked_at.get(peer, -math.inf) >= 2 * RESYNC_INTERVAL):
                self._asked[peer], self._asked_at[peer] = self._round, now
                self._link.send([peer], frames, control=True)

    # -- the round -----------------------------------------------------------------------

    def _encode(self, target: dict[str, np.ndarray]) -> Encoded:
        if self._codec is None:
            return Encoded(parts=target, meta={}, sent=target)
        return self._codec.encode(target, self._rng)

    def _next_copy(self, x: Weights, hat: dict[str, np.ndarray]) -> tuple[Encoded, dict[str, np.ndarray], int]:
        encoded = self._encode(difference(x, hat))
        own = advance(hat, encoded.sent)
        return encoded, own, fingerprint(own)

    async def run(self, trained: Trained) -> Exchanged:
        link = self._link
        round_ = self._round = trained.round
        plan = link.plan(link.name, round_)
        started = time.perf_counter()
        self._ask([peer for peer in self.copies.out_of_step() if peer in plan.weights])
        seq, hat, _ = self._own
        # a difference, its compression and a checksum: passes over the whole model, so
        # in a thread, not on the event loop every node of a simulation shares
        encoded, own, crc = await asyncio.to_thread(self._next_copy, trained.weights, hat)
        meta: dict[str, Any] = {**self._async_meta, CHOCO_META: {"seq": seq, "crc": crc}, **encoded.meta}
        frames = wire.encode(kind=Kind.MODEL, sender=link.name, round=round_, samples=trained.result.samples,
                             tensors=encoded.parts, meta=meta)
        self._own = (seq + 1, own, crc)
        sent = link.send(plan.send_to, frames)
        if self.barrier:
            _, missing = await link.collect(round_, plan, "stepping towards the others")
            events, clock = self._drain(round_), round_
        else:
            missing, events = (), self._drain(None)
            # the merged clock as asynchronous gossip's: the upper median of the neighbourhood
            known = sorted([round_, *self._clocks.values()])
            clock = max(round_, known[len(known) // 2])
        senders = sorted({e.sender for e in events if e.kind == "diff"})
        return Exchanged(
            round=clock,
            received_from=tuple(senders),
            missing=missing,
            bytes_sent=sent,
            bytes_received=sum(e.nbytes for e in events),
            seconds=time.perf_counter() - started,
            aggregate=functools.partial(self._step, trained.weights, own, events, dict(plan.weights), set(missing)),
        )

    def _step(
        self, x: Weights, own: dict[str, np.ndarray], events: list[Event], weights: dict[str, float],
        missing: set[str],
    ) -> Weights:
        """Apply what arrived to the copies, then take the consensus step (in the worker)."""
        self.copies.apply(events)
        hats = {}
        for peer in weights:
            hat = self.copies.in_step(peer) if peer != self._link.name and peer not in missing else None
            if hat is not None:
                hats[peer] = hat
        return consensus(x, own, hats, weights, self._gamma)
