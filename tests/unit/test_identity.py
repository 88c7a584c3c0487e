"""Member identities: derived deterministically from the Curve key, signatures verify."""

from p2pfl.security.identity import identity_from_curve, new_identity, verify_signature
from p2pfl.security.keys import generate_keypair


def test_identity_is_derived_from_the_curve_secret_and_stable() -> None:
    pair = generate_keypair()
    a = identity_from_curve("a", pair.secret)
    again = identity_from_curve("a", pair.secret)
    other = identity_from_curve("a", generate_keypair().secret)
    assert a.public == again.public
    assert a.public != other.public
    assert len(a.public) == 40
    assert pair.secret not in repr(a)


def test_signatures_verify_only_for_the_signed_data_and_key() -> None:
    a, b = new_identity("a"), new_identity("b")
    signature = a.sign(b"round 3 dropped c")
    assert verify_signature(a.public, b"round 3 dropped c", signature)
    assert not verify_signature(a.public, b"round 3 dropped d", signature)
    assert not verify_signature(b.public, b"round 3 dropped c", signature)


def test_malformed_keys_and_signatures_are_false_not_errors() -> None:
    a = new_identity("a")
    assert not verify_signature("short", b"x", a.sign(b"x"))
    assert not verify_signature(a.public, b"x", b"\x00" * 10)
    assert not verify_signature("é" * 40, b"x", a.sign(b"x"))
    assert not verify_signature(a.public, b"x", b"\x00" * 64)
