"""Hostile messages for a live node: every way a peer or an intruder may lie on the wire.

:class:`Hostile` plays the neighbours of node ``NODE`` on a 3-node ring: ``HONEST`` is a
real neighbour (whose models it may replay), ``SPOOFED`` the neighbour it impersonates
(plain links are unauthenticated), ``STRANGER`` no neighbour at all.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import msgpack
import numpy as np

from p2pfl import wire
from p2pfl.testing.hostile_codecs import codec_attack
from p2pfl.testing.outcomes import outcome_of
from p2pfl.testing.values import junk
from p2pfl.wire import Codec, WireLimits

NODE, HONEST, SPOOFED, STRANGER = "0", "1", "2", "7"


class Hostile:
    """Makes hostile messages for a node whose current round is given per call.

    Args:
        seed: makes the sequence reproducible.
        schema: the attacked node's model schema.
        limits: the attacked node's wire limits.
        rounds: the node's number of rounds.
        max_rounds_ahead: the node's inbox window.
        codec: the attacked node's codec (``compress``), if any: its models are compressed.
    """

    def __init__(
        self, seed: int, *, schema: wire.ModelSchema, limits: WireLimits, rounds: int, max_rounds_ahead: int,
        codec: Codec | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.schema = schema
        self.limits = limits
        self.rounds = rounds
        self.ahead = max_rounds_ahead
        self.codec = codec
        self.template = {n: np.zeros(s.shape, wire.WIRE_DTYPES[s.dtype]) for n, s in schema.items()}
        self.honest_sent: deque[list[bytes]] = deque(maxlen=16)  # for replays (stale by then)
        self.spoofs_sent: deque[list[bytes]] = deque(maxlen=16)  # for duplicates
        self.kinds: list[tuple[str, Callable[[int], list[bytes]]]] = [
            ("random_frames", self._random_frames),
            ("msgpack_bomb", self._bomb),
            ("header_field", self._header_field),
            ("tensor_table", self._tensor_table),
            ("lying_sizes", self._lying_sizes),
            ("oversized", self._oversized),
            ("wrong_schema", self._wrong_schema),
            ("version", self._version),
            ("kind", self._kind),
            ("sender", self._sender),
            ("rounds", self._rounds),
            ("replay", self._replay),
            ("valid_spoof", self._valid_spoof),
            ("hello", self._hello),
            ("protocol", self._protocol),
            ("codec", self._codec),
        ]

    # -- building blocks ----------------------------------------------------------------

    def weights(self, extreme: bool = False) -> dict[str, np.ndarray]:
        out = {}
        for name, zero in self.template.items():
            values = cast(np.ndarray, self.np_rng.standard_normal(zero.shape)).astype(zero.dtype)
            if extreme and values.size:
                big = np.finfo(zero.dtype).max if zero.dtype.kind == "f" else 1
                values.flat[self.rng.randrange(values.size)] = self.rng.choice([big, -big, 1e-45, -0.0])
            out[name] = values
        return out

    def model(self, sender: str, round_: int, tensors: dict[str, np.ndarray] | None = None,
              samples: int = 32) -> list[bytes]:
        payload = tensors if tensors is not None else self.weights()
        meta: dict[str, Any] = {}
        if self.codec is not None:  # what the node takes: its own codec's parts
            encoded = self.codec.encode(payload, self.np_rng)
            payload, meta = encoded.parts, encoded.meta
        frames = wire.encode(kind="model", sender=sender, round=round_, samples=samples, tensors=payload, meta=meta)
        return [bytes(f) for f in frames]

    def spoof_round(self, current: int) -> int:
        """A round the node accepts models for: its current one or the next (see ``make``)."""
        return self.rng.randint(current, max(current, min(current + 1, self.rounds - 1)))

    def junk(self, depth: int = 0) -> Any:
        """A random msgpack-able value (see :func:`p2pfl.testing.values.junk`)."""
        return junk(self.rng, depth)


    def header_of(self, frames: list[bytes]) -> dict[str, Any]:
        return msgpack.unpackb(frames[0])

    def repack(self, header: Any, frames: list[bytes]) -> list[bytes]:
        return [msgpack.packb(header), *frames[1:]]

    # -- kinds of attack (each returns frames; the node is at round ``cur``) ---------------

    def _random_frames(self, cur: int) -> list[bytes]:
        r = self.rng
        count = r.choice([1, 1, 1, 2, 3, len(self.schema) + 1, r.randint(1, 64)])
        sizes = [0, 1, 2, 5, 16, 40, 256, r.randint(0, 4096)]
        frames = [r.randbytes(r.choice(sizes)) for _ in range(count)]
        if r.random() < 0.3:  # a plausible msgpack map prefix before the noise
            frames[0] = bytes([0x80 + r.randrange(16)]) + frames[0]
        return frames

    def _bomb(self, cur: int) -> list[bytes]:
        r = self.rng
        room = self.limits.max_header_bytes
        pick = r.randrange(5)
        if pick == 0:  # a huge declared length in a tiny frame
            prefix = r.choice([b"\xdd", b"\xdf", b"\xdb", b"\xc6", b"\xc9\x00", b"\xdc", b"\xde", b"\xda", b"\xc5"])
            width = 2 if prefix[:1] in (b"\xdc", b"\xde", b"\xda", b"\xc5") else 4
            header = prefix + (2 ** (8 * width) - 1 - r.randrange(16)).to_bytes(width, "big")
            return [header + r.randbytes(r.randrange(8))]
        if pick == 1:  # deep nesting
            depth = r.choice([100, 1000, 1025, 5000, room - 2])
            opener = r.choice([b"\x91", b"\x81\xa1k"])
            body = opener * (depth // len(opener)) + b"\xc0"
            return [body[: room]]
        if pick == 2:  # a bomb inside an otherwise valid header's meta
            frames = self.model(SPOOFED, self.spoof_round(cur))
            header = self.header_of(frames)
            del header["meta"]
            raw = bytes([0x80 + len(header) + 1]) + b"".join(
                msgpack.packb(k) + msgpack.packb(v) for k, v in header.items())
            bomb = r.choice([b"\xdd\xff\xff\xff\xff", b"\xdf\x7f\xff\xff\xff", b"\x91" * 2000 + b"\xc0"])
            return [raw + msgpack.packb("meta") + b"\x81\xa1x" + bomb, *frames[1:]]
        if pick == 3:  # many containers from few bytes: memory and CPU amplification
            n = r.randint(1, max(1, room - 100))
            filler: Any = r.choice([{}, [], None, 0])
            header = {"v": r.choice([1, 2]), "kind": "hello", "sender": r.choice([HONEST, STRANGER]),
                      "round": 0, "samples": 0, "tensors": [], "meta": {"x": [filler] * n}}
            packed = msgpack.packb(header)
            return [packed[:room + r.choice([0, 0, 0, 1])]] if len(packed) > room else [packed]
        # int map keys, ext types, invalid utf-8
        return [r.choice([
            msgpack.packb({1: 2, "v": 1}),
            b"\x81\xa1v\xd4\x01\x01",  # fixext1
            b"\x81\xa1v\xc7\x03\x05abc",  # ext8
            b"\x81\xa2\xff\xfe\x01",  # invalid utf-8 key
            b"\x81\xc4\x01v\x01",  # bin key
            msgpack.packb({"v": 1, "kind": "model", "sender": "2", "round": 0, "samples": 0,
                           "tensors": [[b"\xff", "float32", [1], 4]]}),
        ])]

    def _field_value(self, key: str, cur: int) -> Any:
        r = self.rng
        special: dict[str, list[Any]] = {
            "v": [0, 2, -1, 99, 2**64 - 1, "1", 1.5, None, [1], {"v": 1}],
            "kind": ["exec", "", "MODEL", "model ", "hello\x00", 1, None, ["model"], {"kind": "model"},
                     *sorted(wire.KINDS)],
            "sender": ["", NODE, STRANGER, "x" * 257, 1, None, ["2"], b"2"],
            "round": [-1, 2**40, 2**40 - 1, 2**63 - 1, 2**64 - 1, True, False, 1.0, "1", None,
                      self.rounds, self.rounds + 1, cur + self.ahead + 1],
            "samples": [-1, 2**63 - 1, 2**64 - 1, 0, True, 1.5, "3", None, -(2**63)],
            "tensors": [[], None, {}, "tensors", [[]], [None], [[1, 2, 3, 4]] * 3, [[0] * 4] * 100],
            "meta": [None, [], "meta", 1, {"reply": [1, 2]}, {"k": {"k": {"k": []}}}],
        }
        values = special.get(key, [])
        return r.choice(values) if values and r.random() < 0.6 else self.junk()

    def _header_field(self, cur: int) -> list[bytes]:
        frames = self.model(SPOOFED, self.spoof_round(cur))
        header = self.header_of(frames)
        key = self.rng.choice([*header, "extra", "V", ""])
        if self.rng.random() < 0.15:
            header.pop(key, None)
        else:
            header[key] = self._field_value(key, cur)
        return self.repack(header, frames)

    def _tensor_table(self, cur: int) -> list[bytes]:
        r = self.rng
        frames = self.model(SPOOFED, self.spoof_round(cur))
        header = self.header_of(frames)
        table = header["tensors"]
        i = r.randrange(len(table))
        entry = list(table[i])
        pick = r.randrange(7)
        if pick == 0:
            entry[0] = r.choice(["", "x" * 257, 1, None, b"weight", "unknown.weight", table[i - 1][0], self.junk()])
        elif pick == 1:  # dtypes, including unhashable junk
            entry[1] = r.choice(["float64", "float16", "int32", "uint8", "bool", "float128", "object",
                                 "<f4", ">f4", "", None, 1, ["float32"], {"a": 1}, b"float32", self.junk()])
        elif pick == 2:  # shapes, including a zero dimension beside huge ones
            entry[2] = r.choice([[], [0], [-1], [2**40], [2**40 - 1, 2**40 - 1], [1] * 9, [True, 4],
                                 [2.0, 4], "2,4", None, [0, 2**39, 2**39], [0] + [2**40 - 1] * 7,
                                 [0, 2**32, 2**32], [2**20, 2**20, 0], [[2], 4], self.junk()])
            if r.random() < 0.5:  # a zero-sized claim, self-consistent
                entry[3] = 0
                frames = [*frames[: i + 1], b"", *frames[i + 2:]]
        elif pick == 3:
            entry[3] = r.choice([-1, 0, 2**64 - 1, True, 32.0, "32", None, entry[3] + 1, entry[3] - 1, self.junk()])
        elif pick == 4:
            entry = entry[: r.randrange(4)] if r.random() < 0.5 else [*entry, self.junk()]
        elif pick == 5:
            entry = self.junk()
        else:
            header["tensors"] = self.junk() if r.random() < 0.3 else [*table, table[i]]
            return self.repack(header, frames)
        table[i] = entry
        return self.repack(header, frames)

    def _lying_sizes(self, cur: int) -> list[bytes]:
        r = self.rng
        frames = self.model(SPOOFED, self.spoof_round(cur))
        header = self.header_of(frames)
        i = r.randrange(1, len(frames))
        pick = r.randrange(7)
        if pick == 0:  # truncated tensor frame
            frames[i] = frames[i][: r.randrange(len(frames[i]))]
        elif pick == 1:  # longer tensor frame
            frames[i] = frames[i] + r.randbytes(r.choice([1, 3, 4, 1000]))
        elif pick == 2:  # header nbytes lies, frame agrees with the lie
            header["tensors"][i - 1][3] += 4
            frames[i] = frames[i] + b"\x00" * 4
            frames = self.repack(header, frames)
        elif pick == 3:  # frame count off by one either way
            frames = frames[:-1] if r.random() < 0.5 else [*frames, r.randbytes(r.randrange(64))]
        elif pick == 4:  # frames swapped
            frames = [frames[0], *reversed(frames[1:])]
        elif pick == 5:  # shape and dtype lie together, sizes consistent
            entry = header["tensors"][i - 1]
            entry[1], entry[2] = r.choice([("float64", [len(frames[i]) // 8]), ("uint8", [len(frames[i])]),
                                           ("float32", [len(frames[i]) // 4]), ("float16", [len(frames[i]) // 2])])
            frames = self.repack(header, frames)
        else:  # truncated header
            frames[0] = frames[0][: r.randrange(len(frames[0]))]
        return frames

    def _oversized(self, cur: int) -> list[bytes]:
        r = self.rng
        frames = self.model(SPOOFED, self.spoof_round(cur))
        if r.random() < 0.5:  # whole message over the limit
            total = sum(len(f) for f in frames)
            extra = self.limits.max_message_bytes - total + r.choice([1, 7, 4096])
            # in frames each under the limit: libzmq drops the connection of a peer sending
            # one frame over it (ZMQ_MAXMSGSIZE), and the attack would lose what follows
            half = self.limits.max_message_bytes // 2
            frames[-1] = frames[-1] + b"\x00" * min(extra, half)
            frames += [b"\x00" * min(half, extra - i) for i in range(half, extra, half)]
            return frames
        header = self.header_of(frames)  # header over its own limit
        header["meta"] = {"pad": "p" * (self.limits.max_header_bytes + r.choice([0, 1, 100]))}
        return self.repack(header, frames)

    def _wrong_schema(self, cur: int) -> list[bytes]:
        r = self.rng
        tensors = self.weights()
        name = r.choice(list(tensors))
        pick = r.randrange(7)
        if pick == 0:
            tensors[name] = tensors[name].astype(r.choice([np.float64, np.float16, np.int32, np.uint8, np.bool_]))
        elif pick == 1:
            tensors[name] = r.choice([tensors[name].reshape(-1, 1), tensors[name].T.copy(),
                                      np.zeros(tensors[name].size + 1, np.float32), np.zeros((), np.float32)])
        elif pick == 2:
            del tensors[name]
        elif pick == 3:
            tensors["extra"] = np.zeros(3, np.float32)
        elif pick == 4:
            tensors[name + ".renamed"] = tensors.pop(name)
        elif pick == 5:
            values = tensors[name].copy()
            values.flat[r.randrange(values.size)] = r.choice([np.nan, np.inf, -np.inf])
            tensors[name] = values
        else:
            tensors = {}
        return self.model(SPOOFED, self.spoof_round(cur), tensors)

    def _version(self, cur: int) -> list[bytes]:
        frames = self.model(SPOOFED, self.spoof_round(cur))
        header = self.header_of(frames)
        if self.rng.random() < 0.2:
            del header["v"]
        else:
            header["v"] = self.rng.choice([0, 2, 99, -1, 2**64 - 1, None, "1", "v1", 1.5])
        return self.repack(header, frames)

    def _kind(self, cur: int) -> list[bytes]:
        frames = self.model(SPOOFED, self.spoof_round(cur))
        header = self.header_of(frames)
        if self.rng.random() < 0.4:  # another valid kind: most carry no tensors
            header["kind"] = self.rng.choice(sorted(wire.KINDS))
        else:
            header["kind"] = self.rng.choice(["exec", "", "MODEL", "hello ", "pickle", "x" * 300])
        return self.repack(header, frames)

    def _sender(self, cur: int) -> list[bytes]:
        r = self.rng
        sender = r.choice([NODE, STRANGER, "3", "", "x" * 257, "1 ", "\u200b1", "".join(r.choices("abc", k=5))])
        return self.model(sender, self.spoof_round(cur))

    def _rounds(self, cur: int) -> list[bytes]:
        r = self.rng
        far = [self.rounds, self.rounds + r.randrange(1000), 2**40 - 1, 2**31]
        near = [cur + self.ahead + 1, cur + self.ahead + 1 + r.randrange(1000), cur + 2]
        stale = [cur - 1, r.randrange(cur)] if cur > 0 else []
        sender = r.choice([SPOOFED, HONEST, STRANGER])
        # a neighbour's claim of a round ahead moves the node into catch-up: see ``make``
        round_ = r.choice(far + stale + (near if sender == STRANGER else []))
        frames = self.model(sender, round_)
        if r.random() < 0.2:  # out of the encodable range: patch the header
            frames = self.repack({**self.header_of(frames), "round": r.choice([-1, 2**40, 2**63])}, frames)
        return frames

    def _replay(self, cur: int) -> list[bytes]:
        pools = [p for p in (self.honest_sent, self.spoofs_sent) if p]
        if not pools:
            return self._valid_spoof(cur)
        return list(self.rng.choice(list(self.rng.choice(pools))))

    def _valid_spoof(self, cur: int) -> list[bytes]:
        extreme = self.rng.random() < 0.05  # finite but extreme values: poison, not a crash
        samples = self.rng.choice([0, 1, 32, 2**63 - 1])
        frames = self.model(SPOOFED, self.spoof_round(cur), self.weights(extreme), samples=samples)
        self.spoofs_sent.append(frames)
        return frames

    def _hello(self, cur: int) -> list[bytes]:
        r = self.rng
        sender = r.choice([HONEST, SPOOFED, STRANGER, NODE])
        meta: dict[str, Any] = r.choice([{"reply": False}, {"reply": True}, {}, {"reply": [1]}, {"reply": {"a": None}}])
        far = [2**40 - 1] if sender in (STRANGER, NODE) else []
        frames = wire.encode(kind="hello", sender=sender, round=r.choice([0, cur, cur + 1, *far]),
                             samples=0, tensors={}, meta=meta)
        return [bytes(f) for f in frames]

    def _protocol(self, cur: int) -> list[bytes]:
        """The other kinds ("bye", "sync-request", "sync"), well-formed or not, from anyone."""
        r = self.rng
        kind = r.choice(sorted(wire.KINDS - {"model", "hello"}))
        sender = r.choice([SPOOFED, HONEST, STRANGER, NODE, ""])
        round_ = r.choice([0, cur, cur + 1, 2**40 - 1, self.rounds])
        carries = kind in wire.TENSOR_KINDS
        tensors = self.weights() if carries != (r.random() < 0.2) else {}  # sometimes the wrong way
        if carries and tensors and r.random() < 0.3:  # tensors that do not fit the model
            frames = self._wrong_schema(cur)
            return self.repack({**self.header_of(frames), "kind": kind, "sender": sender}, frames)
        samples = r.choice([0, 5])
        meta: dict[str, Any] = r.choice([{}, {"reply": True}, {"x": [1, 2]}])  # drawn after samples, as ever
        encoded = wire.encode(kind=kind, sender=sender, round=round_, samples=samples, tensors=tensors, meta=meta)
        return [bytes(f) for f in encoded]

    def _codec(self, cur: int) -> list[bytes]:
        """A compressed model spoiled in one of the ways of :mod:`p2pfl.testing.hostile_codecs`."""
        sender = self.rng.choice([SPOOFED, STRANGER])
        return codec_attack(self.rng, self.np_rng, self.codec, sender, self.spoof_round(cur), self.weights())[1]

    # -- public ----------------------------------------------------------------------

    def make(self, cur: int) -> tuple[str, list[bytes], str]:
        """One hostile message for a node at round ``cur``: (kind, frames, local outcome).

        Well-formed messages that claim a neighbour are limited to what the node must
        take from any neighbour, authenticated or not, without changing course:

        * never a model or a "bye" as the honest peer "1" for round ``cur`` or later: in
          plain mode those would simply replace it (spoofing needs CurveZMQ);
        * never a round past ``cur + 1`` (except models at or past the last round, which
          are refused before anything else): one such claim makes the node catch up at
          its next round, and a forged "sync" then ends its run -- a known weakness
          reproduced on its own by
          ``test_one_neighbour_cannot_end_training_by_claiming_a_far_round``.
        """
        for _ in range(100):
            kind, build = self.rng.choice(self.kinds)
            frames = build(cur)
            if not frames:
                continue
            outcome = outcome_of(frames, self.schema, self.limits, self.codec)
            if outcome == "ok" and not self._harmless(msgpack.unpackb(frames[0], strict_map_key=False), cur):
                continue
            return kind, frames, outcome
        raise RuntimeError("could not build a harmless hostile message")

    def _harmless(self, header: dict[str, Any], cur: int) -> bool:
        sender, kind, round_ = header["sender"], header["kind"], header["round"]
        if sender not in (HONEST, SPOOFED):
            return True
        if kind == "model" and round_ >= self.rounds:
            return True
        if round_ > cur + 1:
            return False
        return not (sender == HONEST and (kind == "bye" or (kind == "model" and round_ >= cur)))
