"""This process's memory, as the benchmark scripts report it (Linux): helpers, not a benchmark."""

from __future__ import annotations

import resource


def rss_mb() -> float:
    """Resident set size now, in MiB (NaN where /proc has no VmRSS)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
