"""Optional discovery and liveness of consortium nodes over MQTT.

Importing this package does not import ``aiomqtt``; it is needed only once a presence connects
(install the ``mqtt`` extra).
"""

from __future__ import annotations

from p2pfl.discovery.broker import parse_broker_url
from p2pfl.discovery.membership import VISIBLE_STATES, MemberStatus
from p2pfl.discovery.mqtt import MqttPresence
from p2pfl.discovery.watcher import consortia_on, watch_consortium

__all__ = ["VISIBLE_STATES", "MemberStatus", "MqttPresence", "consortia_on", "parse_broker_url", "watch_consortium"]
