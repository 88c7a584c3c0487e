#!/usr/bin/env python3
"""Attack a live node with hostile messages while an honest neighbour keeps gossiping.

Node "0" of a 3-node ring runs its rounds (``Node.run``) on a tcp loopback port. Over
one raw pyzmq DEALER an attacker sends ``--messages`` hostile messages of every kind
(random frames, msgpack bombs, mutated headers and tensor tables, lying sizes, oversized
frames, wrong dtypes/shapes/names, NaN, wrong versions and kinds, spoofed and
non-neighbour senders, stale and far-future rounds, replays and duplicates, valid models
forged as neighbour "2", every other kind the wire knows: bye, sync, ...), spread over
the rounds. Over a second DEALER the honest neighbour "1" sends one valid model per
round, in the middle of the hostile traffic. Neighbour "2" is down; the attacker
impersonates it (plain links are unauthenticated).

    python scripts/fuzz_node.py                      # 100,000 hostile messages
    python scripts/fuzz_node.py --messages 2000 --json

Prints throughput, rejections by reason, the RSS peak over the baseline, the inbox's
largest size and whether the honest peer's model made every round; exits 1 if any of
the checks fails (see ``check``). ``tests/fuzz/test_live_node_fuzz.py`` runs the same
attack (smaller) under pytest.

Every hostile message is also decoded locally with the node's own schema and limits
first: the decoder is deterministic, so the node's count for each decoder reason must
equal the local prediction exactly, and a local non-WireError is a decoder bug whose
message the node must count as ``internal_error``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import random
import resource
import sys
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq
import zmq.asyncio

from p2pfl import Node, NodeConfig, StaticSchedule, WireLimits, ZmqTransport, build_topology, wire
from p2pfl.errors import WireError
from p2pfl.testing import model_frames, tiny_learner

#: Every reason ``wire.decode`` may give (the node adds NODE_REASONS after decoding).
DECODER_REASONS = frozenset({
    "empty", "too_large", "header_too_large", "bad_header", "version", "unknown_kind",
    "frame_count", "size_mismatch", "dtype", "schema_names", "schema_dtype", "schema_shape",
    "non_finite",
})
#: Reasons the node gives for a well-formed message it still refuses (plain links); the
#: attack must provoke each. Others (e.g. "secagg_off") are counted the same way.
NODE_REASONS = frozenset({"unknown_sender", "future_round", "stale_round", "duplicate"})

NODE, HONEST, SPOOFED, STRANGER = "0", "1", "2", "7"
DEAD_ENDPOINT = "tcp://127.0.0.1:1"  # nobody listens: the node's own sends go nowhere
#: Small limits make oversized messages cheap to build; the tiny model is 40 bytes.
DEFAULT_LIMITS = WireLimits(max_message_bytes=64 * 1024, max_header_bytes=16 * 1024, max_tensors=64)

_INTS = [0, 1, -1, 2, 255, 2**31, 2**32, 2**40 - 1, 2**40, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1]
_FLOATS = [0.0, -0.0, 1.0, 1.5, math.nan, math.inf, -math.inf, 1e308, 5e-324]
_STRS = ["", "model", "hello", "exec", "0", "1", "2", "7", "float32", "float128", "object",
         "<f4", "weight", "\x00", "x" * 300, "é", "\U0001f600", "../../etc/passwd"]


def outcome_of(frames: list[bytes], schema: wire.ModelSchema, limits: WireLimits) -> str:
    """What ``wire.decode`` makes of ``frames``: "ok", a WireError reason or "crash:...".

    A crash string names the exception, the innermost p2pfl function and the message,
    e.g. ``crash:TypeError@_tensor_entry: unhashable type: 'list'``.
    """
    try:
        wire.decode(frames, schema=schema, limits=limits)
    except WireError as exc:
        return exc.reason
    except Exception as exc:  # a decoder bug: the node turns it into internal_error
        where = "?"
        for frame in traceback.extract_tb(exc.__traceback__):
            if f"p2pfl{os.sep}" in frame.filename:
                where = frame.name
        return f"crash:{type(exc).__name__}@{where}: {exc}"
    return "ok"


class Hostile:
    """Makes hostile messages for a node whose current round is given per call.

    Args:
        seed: makes the sequence reproducible.
        schema: the attacked node's model schema.
        limits: the attacked node's wire limits.
        rounds: the node's number of rounds.
        max_rounds_ahead: the node's inbox window.
    """

    def __init__(
        self, seed: int, *, schema: wire.ModelSchema, limits: WireLimits, rounds: int, max_rounds_ahead: int
    ) -> None:
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.schema = schema
        self.limits = limits
        self.rounds = rounds
        self.ahead = max_rounds_ahead
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
        ]

    # -- building blocks ----------------------------------------------------------------

    def weights(self, extreme: bool = False) -> dict[str, np.ndarray]:
        out = {}
        for name, zero in self.template.items():
            values = self.np_rng.standard_normal(zero.shape).astype(zero.dtype)
            if extreme and values.size:
                big = np.finfo(zero.dtype).max if zero.dtype.kind == "f" else 1
                values.flat[self.rng.randrange(values.size)] = self.rng.choice([big, -big, 1e-45, -0.0])
            out[name] = values
        return out

    def model(self, sender: str, round_: int, tensors: dict[str, np.ndarray] | None = None,
              samples: int = 32) -> list[bytes]:
        payload = tensors if tensors is not None else self.weights()
        frames = wire.encode(kind="model", sender=sender, round=round_, samples=samples, tensors=payload)
        return [bytes(f) for f in frames]

    def spoof_round(self, current: int) -> int:
        """A round the node accepts models for: its current one or the next (see ``make``)."""
        return self.rng.randint(current, max(current, min(current + 1, self.rounds - 1)))

    def junk(self, depth: int = 0) -> Any:
        r = self.rng
        pick = r.randrange(12 if depth < 3 else 9)
        if pick == 0:
            return None
        if pick == 1:
            return r.random() < 0.5
        if pick == 2:
            return r.choice(_INTS)
        if pick == 3:
            return r.choice(_FLOATS)
        if pick == 4:
            return r.choice(_STRS)
        if pick == 5:
            return r.randbytes(r.randrange(16))
        if pick == 6:
            return r.randint(-(2**63), 2**64 - 1)
        if pick == 7:
            return r.uniform(-1e9, 1e9)
        if pick == 8:
            return "".join(chr(r.randrange(1, 0xD7FF)) for _ in range(r.randrange(8)))
        if pick == 9:
            return [self.junk(depth + 1) for _ in range(r.randrange(5))]
        if pick == 10:
            return {r.choice(_STRS): self.junk(depth + 1) for _ in range(r.randrange(4))}
        return [[self.junk(depth + 1)]]

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
            filler = r.choice([{}, [], None, 0])
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
        meta = r.choice([{"reply": False}, {"reply": True}, {}, {"reply": [1]}, {"reply": {"a": None}}])
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
        frames = wire.encode(kind=kind, sender=sender, round=round_, samples=r.choice([0, 5]),
                             tensors=tensors, meta=r.choice([{}, {"reply": True}, {"x": [1, 2]}]))
        return [bytes(f) for f in frames]

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
            outcome = outcome_of(frames, self.schema, self.limits)
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


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: peak RSS so far (KiB on Linux, bytes on macOS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class RssSampler:
    """Samples this process's RSS in a thread (the event loop may be busy)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.baseline = _rss_bytes()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


@dataclass
class Report:
    """What one attack did and what the node made of it."""

    hostile_sent: int = 0
    honest_sent: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    predicted: Counter[str] = field(default_factory=Counter)  # local decode outcomes
    rejected: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    rounds: int = 0
    rounds_run: list[int] = field(default_factory=list)
    received_from: list[tuple[str, ...]] = field(default_factory=list)
    receiver_alive: bool = False
    run_error: str | None = None
    accounting_error: str | None = None
    attack_seconds: float = 0.0
    total_seconds: float = 0.0
    rss_baseline_mb: float = 0.0
    rss_peak_delta_mb: float = 0.0
    inbox_max: int = 0
    inbox_bound: int = 0

    @property
    def crashes(self) -> dict[str, int]:
        return {k: v for k, v in self.predicted.items() if k.startswith("crash:")}

    @property
    def throughput(self) -> float:
        return self.hostile_sent / self.attack_seconds if self.attack_seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "hostile_sent": self.hostile_sent, "honest_sent": self.honest_sent,
            "attack_seconds": round(self.attack_seconds, 2), "total_seconds": round(self.total_seconds, 2),
            "throughput_msgs_per_s": round(self.throughput),
            "rejected": dict(self.rejected.most_common()), "accepted": self.accepted,
            "by_kind": dict(self.by_kind.most_common()), "decoder_crashes": self.crashes,
            "rounds_run": len(self.rounds_run), "rounds": self.rounds,
            "honest_in_every_round": self.honest_flowed,
            "rss_baseline_mb": round(self.rss_baseline_mb, 1),
            "rss_peak_delta_mb": round(self.rss_peak_delta_mb, 1),
            "inbox_max": self.inbox_max, "inbox_bound": self.inbox_bound,
            "receiver_alive": self.receiver_alive, "run_error": self.run_error,
            "accounting_error": self.accounting_error,
        }

    @property
    def honest_flowed(self) -> bool:
        return len(self.received_from) == self.rounds and all(HONEST in r for r in self.received_from)


def check(report: Report, *, rss_bound_mb: float, tolerated_crash: Callable[[str], bool] = lambda c: False) -> list[str]:
    """The attack's pass criteria; returns what failed (empty: all good).

    Args:
        report: the attack's report.
        rss_bound_mb: most the RSS peak may exceed the pre-attack RSS by.
        tolerated_crash: decoder crashes (``outcome_of`` strings) already known as bugs;
            their messages are allowed to count as ``internal_error``.
    """
    failures = []
    if report.run_error:
        failures.append(f"run() failed: {report.run_error}")
    if report.rounds_run != list(range(report.rounds)):
        failures.append(f"rounds run {report.rounds_run[:5]}..., expected 0..{report.rounds - 1}")
    if not report.receiver_alive:
        failures.append("the node no longer receives (a valid hello after the attack was not counted)")
    if report.accounting_error:
        failures.append(report.accounting_error)
    untolerated = {c: n for c, n in report.crashes.items() if not tolerated_crash(c)}
    if untolerated:
        failures.append(f"decoder raised non-WireError: {untolerated}")
    crashes = sum(report.crashes.values())
    if report.rejected["internal_error"] != crashes:
        failures.append(f"internal_error {report.rejected['internal_error']} != decoder crashes {crashes}")
    # the decoder is deterministic: the node's count for each of its reasons is predicted
    decoder_reasons = DECODER_REASONS | {r for r in report.predicted if r != "ok" and not r.startswith("crash:")}
    for reason in sorted(decoder_reasons):
        if report.rejected[reason] != report.predicted[reason]:
            failures.append(f"rejected[{reason}] = {report.rejected[reason]}, decoder predicts {report.predicted[reason]}")
    # every well-formed message is either accepted or refused for a reason of the node's
    node_level = sum(n for r, n in report.rejected.items() if r not in decoder_reasons | {"internal_error"})
    if node_level + report.accepted != report.predicted["ok"] + report.honest_sent:
        failures.append(
            f"well-formed messages: {node_level} refused + {report.accepted} accepted != "
            f"{report.predicted['ok']} hostile + {report.honest_sent} honest"
        )
    if not report.honest_flowed:
        failures.append(f"honest peer missing in some round: {report.received_from}")
    if report.inbox_max > report.inbox_bound:
        failures.append(f"inbox held {report.inbox_max} > bound {report.inbox_bound}")
    if report.rss_peak_delta_mb > rss_bound_mb:
        failures.append(f"RSS peak {report.rss_peak_delta_mb:.0f} MB over baseline > {rss_bound_mb} MB")
    return failures


class _Observer:
    def __init__(self) -> None:
        self.changed = asyncio.Event()

    def on_round_end(self, metrics: Any, weights: Any) -> None:
        self.changed.set()


async def attack(
    messages: int,
    *,
    seed: int = 0,
    rounds: int | None = None,
    round_timeout: float = 5.0,
    max_rounds_ahead: int = 4,
    limits: WireLimits = DEFAULT_LIMITS,
    timeout: float = 600.0,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Run the attack against a fresh node; returns its report (never raises on failure).

    Args:
        messages: hostile messages to send, spread evenly over the rounds.
        seed: seeds the hostile sequence and the honest model.
        rounds: rounds the node runs (default: one per 1,000 messages, at least 4).
        round_timeout: the node's deadline per round (a round normally ends early: the
            honest model and a forged "2" model both arrive).
        max_rounds_ahead: the node's inbox window.
        limits: the node's wire limits.
        timeout: seconds the whole attack may take before it counts as a hang.
        progress: called with a line of text now and then.
    """
    rounds = rounds or max(4, messages // 1000)
    report = Report(rounds=rounds)
    context = zmq.asyncio.Context()
    sockets: list[zmq.asyncio.Socket] = []
    observer = _Observer()
    config = NodeConfig(name=NODE, rounds=rounds, round_timeout=round_timeout,
                        max_rounds_ahead=max_rounds_ahead, limits=limits)
    schedule = StaticSchedule(build_topology("ring", 3))
    node = Node(config, tiny_learner(0), schedule, ZmqTransport(context, "tcp://127.0.0.1:0"), observer=observer)
    neighbours = schedule.peers(NODE)
    report.inbox_bound = (max_rounds_ahead + 1) * len(neighbours)
    hostile = Hostile(seed, schema=node._schema, limits=limits, rounds=rounds, max_rounds_ahead=max_rounds_ahead)
    honest_learner = tiny_learner(1)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout), node:
            for peer in neighbours:
                node.add_peer(peer, DEAD_ENDPOINT)

            def dealer() -> zmq.asyncio.Socket:
                sock = context.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(node.endpoint)
                sockets.append(sock)
                return sock

            attacker, honest = dealer(), dealer()
            inbox = node._inbox

            def sample_inbox() -> None:
                report.inbox_max = max(report.inbox_max, inbox.pending())

            run_task = asyncio.create_task(node.run())
            run_task.add_done_callback(lambda _: observer.changed.set())
            per_round = [messages // rounds + (1 if r < messages % rounds else 0) for r in range(rounds)]
            with RssSampler() as rss:
                report.rss_baseline_mb = rss.baseline / 2**20
                attack_started = time.perf_counter()
                for round_ in range(rounds):
                    while len(node.history) < round_ and not run_task.done():
                        observer.changed.clear()
                        await observer.changed.wait()
                    if run_task.done():
                        break
                    sample_inbox()
                    honest_at = per_round[round_] // 2
                    for i in range(per_round[round_] + 1):
                        if i == honest_at:
                            frames = model_frames(honest_learner, sender=HONEST, round=round_, samples=32)
                            await honest.send_multipart(frames)
                            hostile.honest_sent.append(frames)
                            report.honest_sent += 1
                        if i == per_round[round_]:
                            break
                        kind, frames, outcome = hostile.make(round_)
                        await attacker.send_multipart(frames)
                        report.hostile_sent += 1
                        report.by_kind[kind] += 1
                        report.predicted[outcome] += 1
                        if i % 64 == 0:
                            sample_inbox()
                    # the forged "2" ends the round early (the honest "1" is already there)
                    frames = hostile.model(SPOOFED, round_)
                    await attacker.send_multipart(frames)
                    report.hostile_sent += 1
                    report.by_kind["valid_spoof"] += 1
                    report.predicted[outcome_of(frames, hostile.schema, limits)] += 1
                    if progress is not None and (round_ + 1) % max(1, rounds // 10) == 0:
                        elapsed = time.perf_counter() - attack_started
                        progress(f"round {round_ + 1}/{rounds}: {report.hostile_sent} hostile sent, "
                                 f"{report.hostile_sent / elapsed:,.0f}/s, "
                                 f"rejected {sum(node.stats.rejected.values())}")
                try:
                    history = await run_task
                except Exception as exc:
                    report.run_error = f"{type(exc).__name__}: {exc}"
                    history = list(node.history)
                total = report.hostile_sent + report.honest_sent

                def settled(stats: Any) -> bool:
                    return sum(stats.rejected.values()) + stats.messages_accepted >= total

                try:
                    if not settled(node.stats):
                        await node.wait_until(settled, timeout=max(30.0, total / 1000))
                except TimeoutError:
                    report.accounting_error = (
                        f"only {sum(node.stats.rejected.values()) + node.stats.messages_accepted} "
                        f"of {total} messages were counted"
                    )
                report.attack_seconds = time.perf_counter() - attack_started
                sample_inbox()
                # still receiving after all that? (counted apart from the attack's messages)
                before = node.stats.messages_accepted
                probe = wire.encode(kind="hello", sender=HONEST, round=0, samples=0, tensors={},
                                    meta={"reply": True})
                await honest.send_multipart(probe)
                try:
                    await node.wait_until(lambda s: s.messages_accepted > before, timeout=30.0)
                    report.receiver_alive = True
                except TimeoutError:
                    report.receiver_alive = False
            report.rss_peak_delta_mb = (rss.peak - rss.baseline) / 2**20
            report.rounds_run = [m.round for m in history]
            report.received_from = [m.received_from for m in history]
            report.rejected = Counter(node.stats.rejected)
            report.accepted = node.stats.messages_accepted - report.receiver_alive  # less the probe
    except TimeoutError:
        report.run_error = report.run_error or f"attack did not finish within {timeout:g} s (hang)"
    finally:
        for sock in sockets:
            sock.close(linger=0)
        context.term()
    report.total_seconds = time.perf_counter() - started
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000, help="hostile messages to send")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=None, help="node rounds (default: messages/1000, >= 4)")
    parser.add_argument("--rss-bound-mb", type=float, default=200.0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before it counts as a hang")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    # the node logs the first rejections of each reason and then every 1000th: keep it quiet
    logging.basicConfig(level=logging.CRITICAL)
    report = asyncio.run(attack(
        args.messages, seed=args.seed, rounds=args.rounds, timeout=args.timeout,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    ))
    failures = check(report, rss_bound_mb=args.rss_bound_mb)
    if args.json:
        print(json.dumps({**report.as_dict(), "failures": failures}, indent=2))
    else:
        print(f"hostile messages : {report.hostile_sent:,} (+{report.honest_sent} honest) "
              f"in {report.attack_seconds:.1f} s = {report.throughput:,.0f} msg/s")
        print(f"rounds           : {len(report.rounds_run)}/{report.rounds} run; honest model in every round: "
              f"{report.honest_flowed}")
        print(f"accepted         : {report.accepted:,} (hellos from neighbours, forged '2' models)")
        print("rejected         : " + ", ".join(f"{k}={v:,}" for k, v in report.rejected.most_common()))
        print(f"decoder crashes  : {report.crashes or 'none'}")
        print(f"memory           : RSS peak +{report.rss_peak_delta_mb:.1f} MB over "
              f"{report.rss_baseline_mb:.0f} MB; inbox max {report.inbox_max} (bound {report.inbox_bound})")
        print(f"still receiving  : {report.receiver_alive}")
        print("result           : " + ("OK" if not failures else "FAILED\n  " + "\n  ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
