"""The differential-privacy modes a run can ask for by name (defined once, in the settings schema)."""

from __future__ import annotations

from p2pfl.settings import DP_MODES

__all__ = ["DP_MODES"]
