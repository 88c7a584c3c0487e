"""Shamir secret sharing of 32-byte seeds over the prime field GF(2**521 - 1).

The textbook construction (Shamir 1979): a random polynomial of degree ``threshold - 1``
whose constant term is the secret, one point per holder; any ``threshold`` points give the
secret back by Lagrange interpolation at 0, fewer give no information about it. The
field's prime is the Mersenne prime 2**521 - 1 (NIST P-521's), far above 2**256, so every
32-byte seed is a field element. ``cryptography`` has no secret sharing; this is the
whole of it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping

from p2pfl.errors import WireError

PRIME = 2**521 - 1
SHARE_BYTES = 66  # a field element, big-endian
SECRET_BYTES = 32


def split(secret: bytes, holders: Iterable[int], threshold: int) -> dict[int, bytes]:
    """One share per holder (its x coordinate, 1 .. PRIME-1) of the 32-byte ``secret``."""
    if len(secret) != SECRET_BYTES or threshold < 1:
        raise ValueError("a 32-byte secret and a threshold of at least 1")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in holders:
        if not 0 < x < PRIME:
            raise ValueError(f"holder coordinate {x} is not a non-zero field element")
        y = 0
        for coefficient in reversed(coefficients):  # Horner
            y = (y * x + coefficient) % PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


def combine(shares: Mapping[int, bytes]) -> bytes:
    """The secret from ``threshold`` (or more consistent) shares.

    Raises:
        WireError: ``bad_share`` when a share is malformed or the result is no 32-byte
            secret (too few or inconsistent shares usually give a large field element).
    """
    points = []
    for x, raw in shares.items():
        if not isinstance(raw, bytes) or len(raw) != SHARE_BYTES or not 0 < x < PRIME:
            raise WireError("bad_share", "a share is not a 66-byte field element")
        y = int.from_bytes(raw, "big")
        if y >= PRIME:
            raise WireError("bad_share", "a share is not a field element")
        points.append((x, y))
    secret = 0
    for i, (xi, yi) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        secret = (secret + yi * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise WireError("bad_share", "the shares do not combine into a seed")
    return secret.to_bytes(SECRET_BYTES, "big")
