"""Before a simulation opens a socket: raise the limits it would hit, or say what to change.

Thousands of nodes in one process hit two limits long before memory: the ZeroMQ
context's socket cap (``MAX_SOCKETS``, 1,023 by default) and the process's open-file
limit (every ZeroMQ socket holds a descriptor for its mailbox, every tcp/ipc connection
one at each end). The first is the simulation's own context: it is set from the node
count. The second is raised up to the hard limit; past that, the run is refused with one
line naming what to change, instead of failing half-way with a traceback per node. So is
a run whose nodes, once built, would need more memory than the machine has left.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import zmq

from p2pfl.errors import ConfigError

try:  # absent on Windows, where neither limit applies the same way
    import resource
except ImportError:  # pragma: no cover
    resource = None  # type: ignore[assignment]

#: Sockets beyond the nodes' own: the Curve authenticator's, monitors of the context.
SOCKET_SLACK = 64
#: Descriptors beyond the sockets': Python's, torch's, the metrics file, the loop's selector.
FD_SLACK = 256
#: What a running node holds beyond its built learner, apart from model copies: its
#: sockets' pipes (~200 KB), its Python objects and its share of the recorder; measured
#: ~0.8 MB per node in total with a 9,610-parameter MLP (docs/benchmarks.md), about
#: 8 model copies (38 KB each) of it.
NODE_OVERHEAD_BYTES = 512 * 1024
#: Model-sized buffers a running node may hold beyond its learner's own, with ``degree``
#: more (one received model per neighbour): snapshot, accumulator, the one it sends, the
#: recorder's two (latest and final), gradient and optimizer state created at first step.
MODEL_COPIES = 7


@dataclass(frozen=True)
class Needs:
    """What ``nodes`` simulated nodes will hold open at once."""

    nodes: int
    sockets: int
    files: int


def needs(transport: str, degrees: Sequence[int]) -> Needs:
    """Sockets and file descriptors for nodes with these out-degrees on ``transport``.

    inproc: a receiving ROUTER and one sending ROUTER per node (see
    :mod:`p2pfl.transport`), one descriptor each. tcp/ipc: a ROUTER and a DEALER per
    peer, each with a monitor (two sockets more), and two descriptors per connection
    (both ends are in this process) plus the listening one.
    """
    sockets = files = 0
    for degree in degrees:
        if transport == "inproc":
            sockets += 1 + (degree > 0)
            files += 1 + (degree > 0)
        else:
            per_node = 3 * (1 + degree)
            sockets += per_node
            files += per_node + 2 * degree + 1
    return Needs(len(degrees), sockets + SOCKET_SLACK, files + FD_SLACK)


def prepare_limits(context: zmq.Context, wanted: Needs, transport: str) -> None:
    """Let ``context`` and this process hold what ``wanted`` says, or raise.

    Call before the context's first socket: libzmq fixes ``MAX_SOCKETS`` then. Raises the
    soft open-file limit (up to the hard one) only if the current one is too low.

    Raises:
        ConfigError: (field ``nodes``) a limit this process cannot raise, with what to change.
    """
    cap = int(context.get(zmq.SOCKET_LIMIT))
    if wanted.sockets > cap:
        raise ConfigError(
            "nodes", f"{wanted.nodes} nodes on {transport} need {wanted.sockets} ZeroMQ sockets, over libzmq's "
            f"limit of {cap} per context; use fewer nodes{_or_inproc(transport)}"
        )
    if wanted.sockets > int(context.get(zmq.MAX_SOCKETS)):
        context.set(zmq.MAX_SOCKETS, wanted.sockets)
    raise_open_files(wanted, transport)


def raise_open_files(wanted: Needs, transport: str) -> None:
    """Raise the soft ``RLIMIT_NOFILE`` to fit ``wanted.files`` (up to the hard limit).

    Raises:
        ConfigError: (field ``nodes``) even the hard limit is too low.
    """
    if resource is None:  # pragma: no cover
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    files = wanted.files + _open_now()
    if soft == resource.RLIM_INFINITY or files <= soft:
        return
    if hard != resource.RLIM_INFINITY and files > hard:
        raise ConfigError(
            "nodes", f"{wanted.nodes} nodes on {transport} need about {files} open files, over this process's "
            f"hard limit of {hard}: raise it (e.g. `ulimit -Hn {files}` as root, or nofile in "
            f"/etc/security/limits.conf) or use fewer nodes{_or_inproc(transport)}"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else files, hard))


def check_memory(degrees: Sequence[int], model_bytes: int, available: int | None = None) -> None:
    """Refuse a run whose nodes would need more memory than is available, in one line.

    Call once the learners are built (their memory is then taken already): the estimate
    is what running adds, ``(MODEL_COPIES + degree)`` model copies plus
    ``NODE_OVERHEAD_BYTES`` per node, against ``MemAvailable`` (``available``: tests).

    Raises:
        ConfigError: (field ``nodes``) the estimate is over what is available.
    """
    available = _available_memory() if available is None else available
    if available is None:
        return
    per_node = [(MODEL_COPIES + degree) * model_bytes + NODE_OVERHEAD_BYTES for degree in degrees]
    wanted = sum(per_node)
    if wanted > available:
        mean = wanted / len(per_node)
        raise ConfigError(
            "nodes", f"{len(per_node)} nodes need about {_size(wanted)} to run ({_size(mean)} per node: "
            f"{MODEL_COPIES} + degree copies of its {_size(model_bytes)} model and {_size(NODE_OVERHEAD_BYTES)}) "
            f"but {_size(available)} is available; use at most {int(available // mean)} nodes, a smaller "
            "model or a machine with more memory"
        )


def _available_memory() -> int | None:
    """The kernel's estimate of memory available without swapping (Linux), or None."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _size(nbytes: float) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} bytes"


def _or_inproc(transport: str) -> str:
    return " or transport = \"inproc\" (two sockets per node)" if transport != "inproc" else ""


def _open_now() -> int:
    """Descriptors this process holds already (0 where that cannot be told)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0
