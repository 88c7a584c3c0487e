"""The differential-privacy modes a run can ask for by name (no heavy imports: configs read it)."""

from __future__ import annotations

DP_MODES = ("", "sample", "update")  # off | DP-SGD per sample | clipped+noised update per round
