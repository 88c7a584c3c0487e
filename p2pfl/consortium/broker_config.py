"""``p2pfl consortium broker-config``: a locked-down mosquitto for a consortium's discovery.

From the bundles written by ``consortium init`` it writes, into ``OUT``::

    OUT/mosquitto.conf   TLS listener, no anonymous clients, the files below
    OUT/acl              member X may publish only under p2pfl/<consortium>/nodes/X/#
                         and read p2pfl/<consortium>/nodes/#; the watcher may only read
    OUT/passwords        mosquitto's password file (PBKDF2-SHA512 hashes, as mosquitto_passwd writes)
    OUT/watch.password   the watcher's password (mode 0600), for ``p2pfl watch --password-file``
    OUT/certs/           with ``tls_hosts``: a CA (ca.crt, ca.key) and the broker's certificate
                         (server.crt, server.key) for those host names

and into each member's bundle ``keys/mqtt.password`` (its password, mode 0600; kept when it
exists, so re-running after adding a member rotates nobody's) and, with ``tls_hosts``,
``keys/mqtt-ca.crt``. A member's MQTT user name is its member name.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from p2pfl._files import write_atomically
from p2pfl.consortium.bundle import CONSORTIUM_FILE, KEYS_DIR
from p2pfl.deploy.consortium_file import load_consortium
from p2pfl.errors import ConfigError

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["BrokerConfig", "PASSWORD_FILE", "CA_FILE", "mosquitto_hash", "write_broker_config"]

#: Where each member's password and the broker's CA go in its bundle (relative to it).
PASSWORD_FILE = f"{KEYS_DIR}/mqtt.password"
CA_FILE = f"{KEYS_DIR}/mqtt-ca.crt"
# mosquitto reads the count from each hash; passwords here are random, so this only slows guessing
# a stolen hash file further, at ~1 ms per connection.
ITERATIONS = 1000
CERT_DAYS = 825


@dataclass(frozen=True)
class BrokerConfig:
    """What :func:`write_broker_config` wrote.

    Attributes:
        config: OUT/mosquitto.conf.
        users: the MQTT user names: every member, then the watcher.
        passwords: each member's bundle password file, and the watcher's.
        ca: the CA certificate, when certificates were made.
    """

    config: Path
    users: tuple[str, ...]
    passwords: dict[str, Path]
    ca: Path | None


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """``$7$ITERATIONS$SALT$HASH``: mosquitto's PBKDF2-SHA512 password hash (base64 salt and hash)."""
    salt = secrets.token_bytes(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def write_broker_config(
    bundles: str | Path, out: str | Path, *, port: int = 8883, watcher: str = "watch",
    tls_hosts: tuple[str, ...] = (),
) -> BrokerConfig:
    """Write the broker's configuration for the consortium in ``bundles`` (see the module docstring).

    Args:
        bundles: the directory ``consortium init`` wrote (``bundles/consortium.toml``, ``bundles/<member>/``).
        out: where the broker's files go; created if missing.
        port: the TLS listener's port.
        watcher: the read-only user for ``p2pfl watch``; must not be a member's name.
        tls_hosts: host names or IP addresses the broker is reached at: makes a CA and a
            server certificate for them. Without, put your own in ``OUT/certs/``.

    Raises:
        ConfigError: no consortium.toml in ``bundles``, a member without its bundle, or a
            watcher name that is a member's.
    """
    bundles, out = Path(bundles), Path(out)
    consortium = load_consortium(bundles / CONSORTIUM_FILE)
    if watcher in consortium.names:
        raise ConfigError("--watcher", f"{watcher!r} is a member's name; choose another watcher user name")
    missing = [name for name in consortium.names if not (bundles / name).is_dir()]
    if missing:
        raise ConfigError("bundles", f"no bundle for {', '.join(missing)} in {bundles}: run 'p2pfl consortium init'")
    for folder in ("certs", "data"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    passwords = {name: bundles / name / PASSWORD_FILE for name in consortium.names}
    passwords[watcher] = out / "watch.password"
    hashes = [f"{user}:{mosquitto_hash(_password(path))}\n" for user, path in passwords.items()]
    write_atomically(out / "passwords", "".join(hashes), mode=0o600)
    write_atomically(out / "acl", acl(consortium.name, consortium.names, watcher), mode=0o644)
    ca = None
    if tls_hosts:
        ca = make_certificates(out / "certs", tls_hosts)
        for name in consortium.names:
            shutil.copyfile(ca, bundles / name / CA_FILE)
    config = out / "mosquitto.conf"
    write_atomically(config, mosquitto_conf(out.resolve(), port), mode=0o644)
    return BrokerConfig(config, (*consortium.names, watcher), passwords, ca)


def acl(consortium: str, members: list[str], watcher: str) -> str:
    """mosquitto ACL: each member writes only its own topics and reads the consortium's."""
    prefix = f"p2pfl/{consortium}/nodes"
    lines = [
        f"# p2pfl consortium {consortium}: written by 'p2pfl consortium broker-config'.",
        "# A member publishes only under its own name (its status, Last Will and progress)",
        "# and reads every member's; the watcher only reads. Nobody else gets anything.",
        "",
    ]
    for name in members:
        lines += [f"user {name}", f"topic write {prefix}/{name}/#", f"topic read {prefix}/#", ""]
    lines += [f"user {watcher}", f"topic read {prefix}/#", ""]
    return "\n".join(lines)


def mosquitto_conf(out: Path, port: int) -> str:
    """A mosquitto 2 configuration: one TLS listener, no anonymous clients, password file and ACL."""
    return f"""# Written by 'p2pfl consortium broker-config'; see scripts/deploy/mosquitto/ for the annotated original.
per_listener_settings false
allow_anonymous false
password_file {out}/passwords
acl_file {out}/acl
# retained statuses survive a broker restart
persistence true
persistence_location {out}/data/

listener {port}
cafile {out}/certs/ca.crt
certfile {out}/certs/server.crt
keyfile {out}/certs/server.key
tls_version tlsv1.2
# client certificates are optional; set true to require them (members then set discovery_cert_file)
require_certificate false
"""


def _password(path: Path) -> str:
    """The password in ``path``, or a new random one written there (mode 0600)."""
    if path.is_file():
        text = path.read_text(encoding="utf-8").strip()
        if text:
            return text.splitlines()[0]
    password = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, password + "\n", mode=0o600)
    return password


def make_certificates(folder: Path, hosts: tuple[str, ...]) -> Path:
    """A CA and a server certificate for ``hosts`` (DNS names or IP addresses) in ``folder``;
    returns the CA certificate. Private keys are written with mode 0600."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def save_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_atomically(path, pem.decode("ascii"), mode=0o600)

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder().subject_name(name("p2pfl MQTT CA")).issuer_name(name("p2pfl MQTT CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signing=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder().subject_name(name(hosts[0])).issuer_name(ca_cert.subject)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signing=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    save_key(ca_key, folder / "ca.key")
    save_key(server_key, folder / "server.key")
    for cert, file in ((ca_cert, "ca.crt"), (server_cert, "server.crt")):
        write_atomically(folder / file, cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), mode=0o644)
    os.chmod(folder, 0o755)
    return folder / "ca.crt"


def _general_name(host: str) -> x509.GeneralName:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_usage(*, signing: bool) -> x509.KeyUsage:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=signing, crl_sign=signing, encipher_only=False, decipher_only=False,
    )
