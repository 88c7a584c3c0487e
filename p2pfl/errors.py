"""The exception tree of p2pfl.

    P2PFLError                  root: catch this to catch everything p2pfl raises on purpose
    ├── ConfigError             a config value or file is wrong (names the field and the fix)
    ├── TopologyError           a graph or mixing matrix is unusable (disconnected, not stochastic, bad file)
    ├── DataError               a dataset or partition spec cannot be built
    ├── WireError               a message from the network broke the wire format (carries the reason)
    ├── TransportError          a socket could not bind, connect or send
    └── NodeError               a node was used wrongly (e.g. run before start) or its peers let it down
        └── PeersGoneError      a resumed node has nobody left to train with (they finished or are down)
"""

from __future__ import annotations


class P2PFLError(Exception):
    """Root of every error p2pfl raises on purpose."""


class ConfigError(P2PFLError, ValueError):
    """A configuration value is invalid.

    Args:
        field: the config key at fault (as written in TOML / on the command line).
        message: what is wrong and what would be valid.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class TopologyError(P2PFLError, ValueError):
    """A topology spec, file or mixing matrix cannot be used."""


class DataError(P2PFLError, ValueError):
    """A dataset or partition cannot be built as asked."""


class WireError(P2PFLError):
    """A network message violates the wire format.

    Args:
        reason: short machine-readable reason (used as the rejection counter's key).
        detail: human-readable explanation for the log.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class TransportError(P2PFLError):
    """A socket could not bind, connect or send."""


class NodeError(P2PFLError):
    """A node was used in a way it does not support."""


class PeersGoneError(NodeError):
    """A node resumed from its checkpoint found no neighbour left to train with: they
    finished the run, or none answered within a round deadline (finished or down)."""
