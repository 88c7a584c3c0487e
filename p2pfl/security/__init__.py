"""Link security: CurveZMQ encryption, key files, and the members' allow-list.

A deployment loads its key pair and the allow-list, runs one authenticator per ZeroMQ
context and gives each node's transport a :class:`CurveSecurity`::

    keypair = read_secret_key("keys/org-a.key_secret")
    allowlist = AllowList(lambda: keys_from_directory("members/"))
    async with curve_authenticator(context, allowlist):
        transport = ZmqTransport(context, "tcp://0.0.0.0:7000",
                                 security=CurveSecurity(keypair, allowlist))
        ...
"""

from __future__ import annotations

from p2pfl.security.allowlist import AllowList, keys_from_directory
from p2pfl.security.curve import (
    ZAP_DOMAIN,
    CurveAuthenticator,
    CurveSecurity,
    LinkSecurity,
    curve_authenticator,
)
from p2pfl.security.keys import (
    KeyPair,
    fingerprint,
    generate_keypair,
    read_public_key,
    read_secret_key,
    validate_key,
    write_keypair,
)

__all__ = [
    "ZAP_DOMAIN",
    "AllowList",
    "CurveAuthenticator",
    "CurveSecurity",
    "KeyPair",
    "LinkSecurity",
    "curve_authenticator",
    "fingerprint",
    "generate_keypair",
    "keys_from_directory",
    "read_public_key",
    "read_secret_key",
    "validate_key",
    "write_keypair",
]
