"""Fixtures shared by the integration tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Debian installs the broker in /usr/sbin, which is not on every user's PATH.
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin")
BROKER_START_SECONDS = 10.0


class Mosquitto:
    """A private mosquitto on a loopback port that a test may stop and start again.

    Args:
        workdir: where its config and log go.
    """

    def __init__(self, workdir: Path) -> None:
        self.binary = _find_mosquitto()
        self.port = _free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        # mosquitto 2 refuses anonymous clients once a listener is configured, unless told otherwise.
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait (bounded) until it accepts connections."""
        with self.log.open("ab") as log_file:
            self._process = process = subprocess.Popen(
                [self.binary, "-c", str(self.config)], stdout=log_file, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + BROKER_START_SECONDS
        while not _accepts(self.port):
            if process.poll() is not None:
                pytest.fail(f"mosquitto exited with {process.returncode}:\n{self.log.read_text()}", pytrace=False)
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"mosquitto did not listen on {self.port} within {BROKER_START_SECONDS:g} s", pytrace=False)
            time.sleep(0.05)  # ok-sleep: polling an external process for its port, bounded by a deadline

    def stop(self) -> None:
        """Kill it (no clean shutdown: clients see the connection drop)."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait(timeout=10)


def _find_mosquitto() -> str:
    path = shutil.which("mosquitto") or shutil.which("mosquitto", path=os.pathsep.join(_SBIN))
    if path is None:
        # CI installs it (.ci/run); a skip would silently drop the discovery tests.
        pytest.fail("the MQTT tests need the mosquitto broker: apt-get install -y mosquitto", pytrace=False)
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A mosquitto shared by the session; yields its ``mqtt://127.0.0.1:PORT`` URL.

    Retained messages live as long as the broker, so each test should use its own consortium.
    """
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    try:
        broker.start()
        yield broker.url
    finally:
        broker.stop()


@pytest.fixture
def own_mqtt_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A started mosquitto for one test, which may stop and restart it."""
    broker = Mosquitto(tmp_path)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
