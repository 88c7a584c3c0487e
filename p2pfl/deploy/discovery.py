"""What a deployed node needs to be on an MQTT broker safely: its login, its signing key, and
the consortium's signing keys to check what the others announce."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from p2pfl._files import modified_time
from p2pfl.deploy.config import OrgNodeConfig, resolve
from p2pfl.deploy.consortium_file import load_consortium
from p2pfl.discovery.broker import BrokerLogin, uses_tls
from p2pfl.errors import ConfigError, P2PFLError

__all__ = ["ConsortiumSigningKeys", "broker_login", "presence_options"]

log = logging.getLogger(__name__)


def broker_login(config: OrgNodeConfig, base: Path) -> BrokerLogin:
    """The ``discovery_*`` keys of node.toml, paths resolved against its folder; the user
    name defaults to the node's name when a password file is given."""

    def path(value: str) -> str:
        return str(resolve(base, value)) if value else ""

    return BrokerLogin(
        username=config.discovery_username or (config.name if config.discovery_password_file else ""),
        password_file=path(config.discovery_password_file),
        ca_file=path(config.discovery_ca_file),
        cert_file=path(config.discovery_cert_file),
        key_file=path(config.discovery_key_file),
    )


class ConsortiumSigningKeys:
    """``name -> signing key`` from consortium.toml, re-read when the file changes (as the
    allow-list is), so an added member's announcements and per-run keys are accepted
    without a restart. One instance serves the node's presence and its secure aggregation.

    Args:
        path: consortium.toml.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = modified_time(path)
        consortium = load_consortium(path)
        self.keys = consortium.signing_keys()
        self.names = consortium.names  # the members when the node started

    def __call__(self, name: str) -> str | None:
        stamp = modified_time(self.path)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.keys = load_consortium(self.path).signing_keys()
            except P2PFLError as exc:  # a half-edited file: keep verifying with the keys we had
                log.error("cannot re-read signing keys from %s (%s); keeping the previous ones", self.path, exc)
        return self.keys.get(name)


def presence_options(
    config: OrgNodeConfig, base: Path, keys: ConsortiumSigningKeys | None, secret_key: str | None,
) -> dict[str, Any]:
    """``login``, ``identity`` and ``signing_keys`` for :class:`~p2pfl.discovery.MqttPresence`;
    says loudly what is not protected.

    Raises:
        ConfigError: the consortium lists a signing key for this node that its secret key does
            not give, or a login file is unusable.
    """
    from p2pfl.security.identity import identity_from_curve

    login = broker_login(config, base)
    login.client_options(config.discovery)  # unusable files fail now, with the key's name
    if not uses_tls(config.discovery):
        log.warning(
            "MQTT broker %s is plain text: statuses and progress (round, accuracy, loss) can be read on the "
            "network; use mqtts:// (docs/how-to/deploy-consortium.md)", config.discovery,
        )
    identity = identity_from_curve(config.name, secret_key) if secret_key else None
    if identity is None:
        log.warning("node %s has no key pair: its announcements on the broker are unsigned, and members that "
                    "verify signatures ignore them", config.name)
    if keys is None:
        log.warning(
            "MQTT discovery without a consortium file: announcements are NOT verified; anyone who can publish "
            "on %s can mark a neighbour offline", config.discovery,
        )
        return {"login": login, "identity": identity, "signing_keys": None}
    consortium_file = keys.path
    fix = "re-run 'p2pfl consortium init DESCRIPTION --out DIR --force --keep-keys' and ship the new consortium.toml"
    if not keys.keys:
        log.warning(
            "%s lists no signing keys (written by an older p2pfl): announcements on the MQTT broker are NOT "
            "verified, and anyone who can publish on %s can mark a neighbour offline; %s",
            consortium_file, config.discovery, fix,
        )
        return {"login": login, "identity": identity, "signing_keys": None}
    unsigned = [name for name in keys.names if name not in keys.keys]
    if unsigned:
        log.warning("%s lists no signing_key for %s: their announcements will be refused; %s",
                    consortium_file, ", ".join(unsigned), fix)
    listed = keys.keys.get(config.name)
    if identity is not None and listed is not None and listed != identity.public:
        raise ConfigError(
            "secret_key", f"the signing_key {consortium_file} lists for {config.name!r} is not the one this "
            f"node's secret key gives; {fix}",
        )
    return {"login": login, "identity": identity, "signing_keys": keys}
