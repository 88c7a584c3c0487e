"""``node.toml``: everything one organisation's node process needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pfl.config import load_toml
from p2pfl.errors import ConfigError, NodeError
from p2pfl.node.peers import StartCondition
from p2pfl.node.records import check_mode


@dataclass(frozen=True)
class OrgNodeConfig:
    """One organisation's node. Relative paths are relative to the node.toml file."""

    name: str  # this organisation's member name (as in consortium.toml)
    bind: str  # where to listen, e.g. tcp://0.0.0.0:7002
    consortium: str = ""  # public consortium file: members, endpoints, public keys, topology
    peers: dict[str, str] = field(default_factory=dict)  # static name -> endpoint (no consortium file)
    topology: str = ""  # topology spec/file when not given by the consortium file
    mixing: str = "metropolis"  # metropolis | max-degree | file
    secret_key: str = ""  # this node's CurveZMQ secret key file (mode 0600)
    public_key: str = ""  # this node's public key file
    learner: str = ""  # module:function(**learner_args) building the Learner (model + private data)
    learner_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments for it
    rounds: int = 40  # communication rounds
    local_epochs: int = 1  # passes over the local data per round (TorchLearner)
    local_steps: int = 0  # >0: exactly this many steps per round instead
    round_timeout: float = 60.0  # seconds to wait for neighbours each round
    mode: str = "sync"  # sync (round barrier) | async (no barrier; rounds bound the logical clock)
    staleness: float = 0.5  # async: discount exponent for models older than the grace
    staleness_grace: int = 5  # async: clock ticks of lag that are not discounted
    start: str = "all"  # all | none | min:N | at:ISO-8601
    state_dir: str = "state"  # checkpoints, metrics.jsonl and the final model
    discovery: str = ""  # optional mqtt://host:port for live membership
    insecure: bool = False  # plain-text links (only with an explicit flag; logs a warning)
    seed: int = 0  # seed of random topologies given by name
    hello_interval: float = 1.0  # first delay between greetings while waiting to start
    torch_threads: int = 0  # torch intra-op threads (0 = torch's default: all cores)
    secure_aggregation: bool = False  # masked models: neighbours learn only weighted sums (needs the Curve key)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("name", "give this organisation's member name")
        if "://" not in self.bind:
            raise ConfigError("bind", f"{self.bind!r} is not an endpoint like tcp://0.0.0.0:7002")
        if not self.consortium and not self.peers:
            raise ConfigError("consortium", "give a consortium file, or a [peers] table name = endpoint")
        if not self.learner or ":" not in self.learner:
            raise ConfigError("learner", "give module:function that builds this node's learner")
        if self.rounds < 1:
            raise ConfigError("rounds", f"must be >= 1, got {self.rounds}")
        if self.local_epochs < 1 or self.local_steps < 0:
            raise ConfigError("local_epochs", "local_epochs must be >= 1 and local_steps >= 0")
        if not self.round_timeout > 0:
            raise ConfigError("round_timeout", f"must be > 0 seconds, got {self.round_timeout}")
        if not self.insecure and not self.secret_key:
            raise ConfigError("secret_key", "give the key file, or run with --insecure (plain text)")
        if self.discovery and not self.discovery.startswith("mqtt://"):
            raise ConfigError("discovery", f"{self.discovery!r}: use mqtt://host:port or leave empty")
        if self.torch_threads < 0:
            raise ConfigError("torch_threads", f"must be >= 0 (0 = torch's default), got {self.torch_threads}")
        StartCondition.parse(self.start)  # raises ConfigError naming "start"
        check_mode(self.mode, self.staleness, self.staleness_grace)
        if self.mode == "async" and self.secure_aggregation:
            raise ConfigError("secure_aggregation", "needs the round barrier: use mode = \"sync\"")
        if self.secure_aggregation and (self.insecure or not self.secret_key):
            raise ConfigError(
                "secure_aggregation", "derives its pairwise masks from the Curve key pair: give secret_key, not --insecure"
            )


def load_node_config(path: str | Path, **overrides: Any) -> tuple[OrgNodeConfig, Path]:
    """Read node.toml; returns the config (``overrides`` applied) and the file's folder."""
    path = Path(path)
    config = load_toml(OrgNodeConfig, path, overrides=overrides)
    return config, path.resolve().parent


def require_secure_neighbourhood(plan: Any) -> None:
    """Raise the ConfigError a node gives when ``plan``'s node has too few neighbours for
    secure aggregation; ``p2pfl consortium check`` reports the same text."""
    from p2pfl.privacy.secagg import check_neighbourhood

    try:
        check_neighbourhood(plan)
    except NodeError as exc:
        raise ConfigError("secure_aggregation", str(exc)) from None


def resolve(base: Path, value: str) -> Path:
    """A config path, relative to the config file's folder unless absolute."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path

