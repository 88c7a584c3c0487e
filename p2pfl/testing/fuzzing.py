"""A live node under hostile traffic while an honest neighbour keeps gossiping.

:func:`attack` runs node ``"0"`` of a 3-node ring on a tcp loopback port and sends it
hostile messages (:class:`~p2pfl.testing.hostile.Hostile`) over a raw DEALER, with one
valid model per round from the honest neighbour ``"1"`` in the middle; :func:`check`
says what went wrong. ``scripts/fuzz_node.py`` is its command line.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio

from p2pfl import Node, NodeConfig, StaticSchedule, WireLimits, ZmqTransport, build_topology, wire
from p2pfl.testing.hostile import HONEST, NODE, SPOOFED, Hostile
from p2pfl.testing.learners import tiny_learner
from p2pfl.testing.messages import model_frames
from p2pfl.testing.outcomes import DECODER_REASONS, outcome_of

DEAD_ENDPOINT = "tcp://127.0.0.1:1"  # nobody listens: the node's own sends go nowhere
#: Small limits make oversized messages cheap to build; the tiny model is 40 bytes.
DEFAULT_LIMITS = WireLimits(max_message_bytes=64 * 1024, max_header_bytes=16 * 1024, max_tensors=64)


def _inbox_size(node: Node) -> int:
    # The one private attribute read here: the node has no public count of the messages
    # it holds for future rounds, and a bound on that count is what this attack checks.
    return int(node._inbox.pending())


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
    compress: str = "",
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
        compress: the node's codec (``""`` = none); the honest and forged models use it.
    """
    rounds = rounds or max(4, messages // 1000)
    report = Report(rounds=rounds)
    context = zmq.asyncio.Context()
    sockets: list[zmq.asyncio.Socket] = []
    observer = _Observer()
    config = NodeConfig(name=NODE, rounds=rounds, round_timeout=round_timeout,
                        max_rounds_ahead=max_rounds_ahead, limits=limits, compress=compress)
    schedule = StaticSchedule(build_topology("ring", 3))
    learner = tiny_learner(0)
    schema = wire.schema_of(learner.get_weights())  # the node's: it checks models against its own
    node = Node(config, learner, schedule, ZmqTransport(context, "tcp://127.0.0.1:0"), observer=observer)
    neighbours = schedule.peers(NODE)
    report.inbox_bound = (max_rounds_ahead + 1) * len(neighbours)
    codec = wire.parse_codec(compress)
    hostile = Hostile(seed, schema=schema, limits=limits, rounds=rounds, max_rounds_ahead=max_rounds_ahead,
                      codec=codec)
    honest_learner = tiny_learner(1)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout), node:
            for peer in neighbours:
                node.add_peer(peer, DEAD_ENDPOINT)
            endpoint = node.endpoint
            if endpoint is None:  # entering the node binds it: never happens
                raise RuntimeError("the attacked node has no endpoint")

            def dealer() -> zmq.asyncio.Socket:
                sock = context.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(endpoint)
                sockets.append(sock)
                return sock

            attacker, honest = dealer(), dealer()

            def sample_inbox() -> None:
                report.inbox_max = max(report.inbox_max, _inbox_size(node))

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
                            frames = (model_frames(honest_learner, sender=HONEST, round=round_, samples=32)
                                      if codec is None else
                                      hostile.model(HONEST, round_, honest_learner.get_weights()))
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
                    report.predicted[outcome_of(frames, hostile.schema, limits, codec)] += 1
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
