"""Optional discovery and liveness of consortium nodes over MQTT.

Importing this package does not import ``aiomqtt``; it is needed only once a presence connects
(install the ``mqtt`` extra).
"""

from __future__ import annotations

from p2pfl.discovery.membership import MemberStatus
from p2pfl.discovery.mqtt import MqttPresence, parse_broker_url, watch_consortium

__all__ = ["MemberStatus", "MqttPresence", "parse_broker_url", "watch_consortium"]
