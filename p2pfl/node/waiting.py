"""Before and after a node's rounds: waiting to start, to resume, and lingering once finished.

A fresh node greets its neighbours until its start condition holds (a consortium starts
up over minutes, so it waits as long as it takes). A node resumed from a checkpoint joins
a run under way: it waits one round deadline at most, and if no neighbour is left to
train with (they finished, or nobody answers) it says so and stops instead of waiting
forever. A node that finished lingers briefly, answering greetings with "finished", so a
neighbour restarting just then learns the run is over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from p2pfl.errors import PeersGoneError
from p2pfl.node.link import NodeLink
from p2pfl.node.peers import ReportsFinished, StartCondition

log = logging.getLogger(__name__)


async def until_ready(link: NodeLink, condition: StartCondition, *, hello_interval: float, log_every: float) -> None:
    """Greet the neighbours until ``condition`` holds (see :meth:`p2pfl.node.node.Node.wait_until_ready`)."""
    peers = link.peers
    interval = hello_interval
    last_log = time.monotonic()
    while not condition.holds(len(peers.present()), len(peers.peers)):
        link.greet(peers.absent(), reply=False)
        if time.monotonic() - last_log >= log_every:
            log.info("node %s waiting to start (%s): no word yet from %s",
                     link.name, condition, ", ".join(peers.absent()) or "nobody")
            last_log = time.monotonic()
        await peers.wait_for_news(interval)
        interval = min(interval * 2, hello_interval * 8)
    log.info("node %s: start condition %s holds; present: %s",
             link.name, condition, ", ".join(sorted(peers.present())) or "none")


async def to_resume(link: NodeLink, start_round: int, *, hello_interval: float) -> None:
    """Greet the neighbours until one that still runs answers, for one round deadline at most.

    Raises:
        PeersGoneError: every neighbour finished the run, or none answered within the
            deadline (they finished or are down): nobody is left to train with.
    """
    peers = link.peers
    if not peers.peers:
        return
    deadline = time.monotonic() + link.round_timeout
    interval = hello_interval
    while not peers.live():
        finished = _finished(link)
        left = deadline - time.monotonic()
        if set(peers.peers) <= finished.keys() or left <= 0:
            raise PeersGoneError(_gone(link, start_round, finished))
        link.greet([p for p in peers.peers if p not in finished], reply=False)
        await peers.wait_for_news(min(interval, left))
        interval = min(interval * 2, hello_interval * 8)
    log.info("node %s resumes at round %d; up: %s", link.name, start_round, ", ".join(sorted(peers.live())))


async def linger(link: NodeLink, seconds: float) -> None:
    """After the last round: answer greetings (saying "finished") until every neighbour
    finished too, or for ``seconds``: one that stopped mid-run may be restarting now."""
    peers = link.peers
    deadline = time.monotonic() + seconds
    if not set(peers.peers) <= _finished(link).keys():
        log.info("node %s finished its rounds; telling neighbours that greet it so, for up to %.0f s",
                 link.name, seconds)
    while not set(peers.peers) <= _finished(link).keys():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await peers.wait_for_news(left)


def _finished(link: NodeLink) -> dict[str, int | None]:
    """Neighbours known to have completed the run: said so to us, or the broker says so
    (and they have not been heard since), with their last round where known."""
    known: dict[str, int | None] = dict(link.peers.finished())
    presence = link.presence
    if isinstance(presence, ReportsFinished):
        live = link.peers.live()
        for peer in link.peers.peers:
            if peer not in known and peer not in live and presence.has_finished(peer):
                known[peer] = None
    return known


def _gone(link: NodeLink, start_round: int, finished: dict[str, int | None]) -> str:
    silent = [p for p in link.peers.peers if p not in finished]
    head = f"node {link.name} resumed at round {start_round}, but"
    if not finished:
        return (f"{head} no neighbour ({_names(silent)}) answered within {link.round_timeout:g} s "
                "since resuming: they finished the run or are down")
    rounds = [r for r in finished.values() if r is not None]
    said = f"{_plural('neighbour', finished)} {_names(finished)} finished the run"
    if rounds:
        said += f" (last round {max(rounds)})"
    if silent:
        said += f" and {_names(silent)} did not answer within {link.round_timeout:g} s"
    return f"{head} its {said}: nobody is left to train with"


def _names(peers: Iterable[str]) -> str:
    return ", ".join(sorted(peers))


def _plural(word: str, items: Iterable[object]) -> str:
    return word if len(list(items)) == 1 else word + "s"
