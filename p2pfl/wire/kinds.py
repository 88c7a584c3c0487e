"""The message kinds a node understands, by their wire names."""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    """A message kind; each member *is* its wire string (``Kind.MODEL == "model"``).

    A ``StrEnum`` so headers stay byte-identical (msgpack packs a member as its value)
    and code and tests that compare with plain strings keep working. Extensions add
    their kinds here, never reuse a name.
    """

    #: a round's weights
    MODEL = "model"
    #: no tensors: "I am up, at this round" (``meta.reply`` marks an answer)
    HELLO = "hello"
    #: no tensors: "I am leaving"
    BYE = "bye"
    #: a node that fell behind asks for its neighbours' latest averaged weights ...
    SYNC_REQUEST = "sync-request"
    #: ... and gets them back, with the round they start
    SYNC = "sync"
    #: secure aggregation (p2pfl.privacy.secagg): a weighted model in masked fixed point
    MASKED_MODEL = "masked-model"
    #: secure aggregation: a receiver forwards its neighbours' endorsements of its dropout
    #: set and asks for the masks (``meta.endorsements``)
    REVEAL_REQUEST = "reveal-request"
    #: secure aggregation: a neighbour's pairwise masks with the dropped ones (tensor)
    #: and its self-mask shares of the present ones (``meta.shares``)
    REVEAL = "reveal"
    #: secure aggregation: a sender's signed per-run ephemeral key (``meta.key``, ``meta.sig``)
    SECAGG_KEY = "secagg-key"
    #: secure aggregation: a receiver relays its neighbours' signed keys (``meta.keys``)
    SECAGG_KEYS = "secagg-keys"
    #: secure aggregation: a receiver's signed dropout set and the shares it carries
    SECAGG_SET = "secagg-set"
    #: secure aggregation: a neighbour's endorsement of that set, one MAC tag for each other
    #: neighbour (``meta.tags``)
    SECAGG_ENDORSEMENT = "secagg-endorsement"
    #: secure aggregation: a reveal when nobody dropped: self-mask shares only
    REVEAL_SHARES = "reveal-shares"
    #: CHOCO gossip (p2pfl.node.gossip_choco): no tensors: "send me your full public copy"
    CHOCO_RESYNC = "choco-resync"
    #: CHOCO gossip: a sender's full public copy, uncompressed, with the sequence number of
    #: the next difference (``meta.choco``)
    CHOCO_STATE = "choco-state"


#: Secure aggregation's control kinds: exchanges without it refuse them.
SECAGG_CONTROL_KINDS = frozenset({
    Kind.REVEAL_REQUEST, Kind.REVEAL, Kind.SECAGG_KEY, Kind.SECAGG_KEYS, Kind.SECAGG_SET,
    Kind.SECAGG_ENDORSEMENT, Kind.REVEAL_SHARES,
})
#: Every kind; members hash and compare as their wire strings, so ``"model" in KINDS`` holds.
KINDS = frozenset(Kind)
#: Kinds that carry tensors: checked against the local model's schema, or against the
#: per-kind schema given to :func:`~p2pfl.wire.decode` (the masked kinds); all others carry none.
TENSOR_KINDS = frozenset({Kind.MODEL, Kind.SYNC, Kind.MASKED_MODEL, Kind.REVEAL, Kind.CHOCO_STATE})
#: CHOCO gossip's control kinds: the other exchanges refuse them.
CHOCO_CONTROL_KINDS = frozenset({Kind.CHOCO_RESYNC, Kind.CHOCO_STATE})

#: wire string -> member, for decoding (one dict lookup validates and converts)
KIND_OF: dict[str, Kind] = {kind.value: kind for kind in Kind}
