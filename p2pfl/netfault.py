"""The fault-injecting TCP proxy, now :mod:`p2pfl.testing.faults` (this name stays importable)."""

from __future__ import annotations

from p2pfl.testing.faults import (
    CALL_TIMEOUT,
    CHUNK_BYTES,
    MAX_QUEUED_CHUNKS,
    CutMode,
    FaultProxy,
    LinkStats,
    ProxyLink,
    parse_endpoint,
)

__all__ = [
    "CALL_TIMEOUT",
    "CHUNK_BYTES",
    "MAX_QUEUED_CHUNKS",
    "CutMode",
    "FaultProxy",
    "LinkStats",
    "ProxyLink",
    "parse_endpoint",
]
