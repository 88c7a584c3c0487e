"""The top-level ``p2pfl`` namespace: what it exports and that importing it is free."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

import p2pfl
import p2pfl.errors
from p2pfl.errors import (
    ConfigError,
    DataError,
    NodeError,
    P2PFLError,
    PeersGoneError,
    TopologyError,
    TransportError,
    WireError,
)


def test_all_is_sorted_and_unique() -> None:
    assert p2pfl.__all__ == sorted(p2pfl.__all__)
    assert len(set(p2pfl.__all__)) == len(p2pfl.__all__)


@pytest.mark.parametrize("name", p2pfl.__all__)
def test_every_public_name_resolves(name: str) -> None:
    value = getattr(p2pfl, name)
    assert value is not None
    if name != "__version__":
        # a lazy name is the object of the same name in its defining module
        module = sys.modules[getattr(value, "__module__", "p2pfl")]
        assert getattr(module, name) is value


def test_dir_lists_the_public_names_and_unknown_names_raise() -> None:
    assert sorted(dir(p2pfl)) == sorted(p2pfl.__all__)
    with pytest.raises(AttributeError, match="no_such_name"):
        p2pfl.no_such_name  # noqa: B018
    assert p2pfl.__version__ == "0.1.0"


_PROBE = """
import json, logging, os, sys, threading
files_before = sorted(os.listdir("."))
root_before = list(logging.getLogger().handlers)
import p2pfl
logger = logging.Logger.manager.loggerDict.get("p2pfl")
print(json.dumps({
    "heavy": sorted(m for m in ("torch", "zmq", "matplotlib", "sklearn") if m in sys.modules),
    "threads": threading.active_count(),
    "root_handlers_added": len(logging.getLogger().handlers) - len(root_before),
    "p2pfl_handlers": len(getattr(logger, "handlers", [])),
    "root_level": logging.getLogger().level,
    "files_before": files_before,
    "files_after": sorted(os.listdir(".")),
}))
"""


def test_import_has_no_side_effects(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    probe = json.loads(done.stdout)
    assert probe["heavy"] == []
    assert probe["threads"] == 1
    assert probe["root_handlers_added"] == 0
    assert probe["p2pfl_handlers"] == 0
    assert probe["root_level"] == 30  # WARNING, untouched
    assert probe["files_before"] == probe["files_after"] == []
    assert list(tmp_path.iterdir()) == []


ERRORS = [ConfigError, DataError, NodeError, PeersGoneError, TopologyError, TransportError, WireError]


def test_every_error_class_sits_under_p2pflerror() -> None:
    assert P2PFLError.__bases__ == (Exception,)
    defined = [
        obj
        for _, obj in inspect.getmembers(p2pfl.errors, inspect.isclass)
        if issubclass(obj, BaseException) and obj.__module__ == "p2pfl.errors"
    ]
    assert sorted(c.__name__ for c in defined) == sorted(c.__name__ for c in [P2PFLError, *ERRORS])
    for cls in ERRORS:
        assert issubclass(cls, P2PFLError)
        assert getattr(p2pfl, cls.__name__) is cls
    # value-shaped errors are also ValueErrors, so generic callers can catch them
    for cls in (ConfigError, TopologyError, DataError):
        assert issubclass(cls, ValueError)


def test_config_error_carries_field() -> None:
    err = ConfigError("rounds", "must be >= 1, got 0")
    assert err.field == "rounds"
    assert str(err) == "rounds: must be >= 1, got 0"
    with pytest.raises(P2PFLError):
        raise err


def test_wire_error_carries_reason_and_detail() -> None:
    err = WireError("too_large", "frame of 9 bytes exceeds 8")
    assert (err.reason, err.detail) == ("too_large", "frame of 9 bytes exceeds 8")
    assert str(err) == "too_large: frame of 9 bytes exceeds 8"


def test_the_consortium_tools_load_without_torch() -> None:
    """Bundling, checking and rehearsing run on an operator's machine; only members train."""
    probe = "import sys, p2pfl.consortium.rehearsal, p2pfl.consortium.check; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
