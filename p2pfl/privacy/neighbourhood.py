"""Whether nodes have enough neighbours for secure aggregation, as config errors.

:func:`p2pfl.privacy.secagg.check_neighbourhood` holds the rule (at least 3 neighbours);
this turns its refusal into the :class:`~p2pfl.errors.ConfigError` that a simulation,
``p2pfl node`` and ``p2pfl consortium init/check`` all report the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from p2pfl.errors import ConfigError, NodeError

if TYPE_CHECKING:
    from p2pfl.topology.schedule import GossipSchedule, RoundPlan

__all__ = ["require_secure_neighbourhood", "secure_neighbourhood_errors"]


def require_secure_neighbourhood(plan: RoundPlan) -> None:
    """Raise ConfigError("secure_aggregation", why) if ``plan``'s node has too few neighbours."""
    # secagg imports the learner (torch): the consortium tools import this module without torch
    from p2pfl.privacy.secagg import check_neighbourhood

    try:
        check_neighbourhood(plan)
    except NodeError as exc:
        raise ConfigError("secure_aggregation", str(exc)) from None


def secure_neighbourhood_errors(
    schedule: GossipSchedule, names: Iterable[str], round_: int = 0
) -> dict[str, ConfigError]:
    """The error each of ``names`` would stop with, were it to run secure aggregation in
    ``round_`` of ``schedule``; empty if every one has enough neighbours."""
    errors = {}
    for name in names:
        try:
            require_secure_neighbourhood(schedule.plan(name, round_))
        except ConfigError as exc:
            errors[name] = exc
    return errors
