"""``node.toml``: everything one organisation's node process needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pfl.config import load_toml
from p2pfl.privacy.neighbourhood import require_secure_neighbourhood
from p2pfl.settings import setting, validate

__all__ = ["OrgNodeConfig", "load_node_config", "require_secure_neighbourhood", "resolve"]


@dataclass(frozen=True)
class OrgNodeConfig:
    """One organisation's node. Relative paths are relative to the node.toml file.

    Keys, defaults, bounds and help text are those of :mod:`p2pfl.settings`.
    """

    name: str = setting("name", required=True)
    bind: str = setting("bind", required=True)
    consortium: str = setting("consortium")
    peers: dict[str, str] = setting("peers")
    # "" = the topology the consortium file names
    topology: str = setting("topology", default="")
    mixing: str = setting("mixing")
    secret_key: str = setting("secret_key")
    public_key: str = setting("public_key")
    learner: str = setting("learner")
    learner_args: dict[str, Any] = setting("learner_args")
    metrics: tuple[str, ...] = setting("metrics")
    rounds: int = setting("rounds")
    local_epochs: int = setting("local_epochs")
    local_steps: int = setting("local_steps")
    round_timeout: float = setting("round_timeout")
    mode: str = setting("mode")
    staleness: float = setting("staleness")
    staleness_grace: int = setting("staleness_grace")
    compress: str = setting("compress")
    gossip: str = setting("gossip")
    start: str = setting("start")
    state_dir: str = setting("state_dir")
    discovery: str = setting("discovery")
    discovery_username: str = setting("discovery_username")
    discovery_password_file: str = setting("discovery_password_file")
    discovery_ca_file: str = setting("discovery_ca_file")
    discovery_cert_file: str = setting("discovery_cert_file")
    discovery_key_file: str = setting("discovery_key_file")
    insecure: bool = setting("insecure")
    seed: int = setting("seed")
    hello_interval: float = setting("hello_interval")
    torch_threads: int = setting("torch_threads")
    secure_aggregation: bool = setting("secure_aggregation")

    def __post_init__(self) -> None:
        validate(self)


def load_node_config(path: str | Path, **overrides: Any) -> tuple[OrgNodeConfig, Path]:
    """Read node.toml; returns the config (``overrides`` applied) and the file's folder."""
    path = Path(path)
    config = load_toml(OrgNodeConfig, path, overrides=overrides)
    return config, path.resolve().parent


def resolve(base: Path, value: str) -> Path:
    """A config path, relative to the config file's folder unless absolute."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path
