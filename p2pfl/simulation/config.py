"""The experiment description a simulation (and its plain reference loop) runs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from p2pfl.errors import ConfigError
from p2pfl.privacy.modes import DP_MODES

TRANSPORTS = ("inproc", "ipc", "tcp")


@dataclass(frozen=True)
class ExperimentConfig:
    """One simulated experiment; TOML keys and ``key=value`` overrides use these names."""

    nodes: int | None = None  # node count; None = from the topology file, else 16
    topology: str = "ring"  # generator spec (ring, torus:4x4, random-regular:4, ...) or a file
    mixing: str = "metropolis"  # metropolis | max-degree | file (edge weights from the file)
    fanout: int = 0  # >0: time-varying gossip, each round send to this many random peers
    dataset: str = "digits"  # digits | breast_cancer | csv:PATH | npz:PATH
    partition: str = "dirichlet:0.5"  # iid | dirichlet:ALPHA | shards:K | quantity:ALPHA
    model: str = "mlp"  # mlp | cnn | logreg | module:function(input_shape, num_classes)
    rounds: int = 40  # communication rounds
    local_epochs: int = 1  # passes over the local data per round
    local_steps: int = 0  # >0: exactly this many optimizer steps per round instead
    lr: float = 0.05  # SGD learning rate
    momentum: float = 0.9  # SGD momentum (kept locally across rounds)
    weight_decay: float = 0.0  # SGD weight decay
    batch_size: int = 16  # local mini-batch size
    seed: int = 0  # fixes data split, partition, init, shuffling and random graphs
    transport: str = "inproc"  # inproc | ipc | tcp (127.0.0.1, ephemeral ports)
    curve: bool = False  # CurveZMQ on every link (fresh keys per node, allow-list of all nodes)
    round_timeout: float = 60.0  # seconds a node waits for neighbours each round
    mode: str = "sync"  # sync (round barrier) | async (no barrier, staleness-weighted merging)
    staleness: float = 0.5  # async: a model s ticks older than the grace counts (1+s)^-staleness
    staleness_grace: int = 5  # async: clock ticks of lag that are not discounted
    slow_nodes: int = 0  # nodes (chosen with the seed) whose steps take slowdown times longer
    slowdown: float = 1.0  # how many times slower the slow nodes are
    step_seconds: float = 0.0  # emulated step time of a normal node (0 = as fast as this machine)
    test_fraction: float = 0.2  # share of the dataset held out as the common test set
    device: str = "cpu"  # torch device for every node (cpu, cuda, cuda:1, ...)
    torch_threads: int = 1  # torch intra-op threads while simulating (0 = leave torch's setting)
    pin_cpu: bool = True  # keep the event loop and the training worker on one core (with torch_threads = 1)
    aggregator: str = "mean"  # mean | median | trimmed-mean:B | krum:F | multi-krum:F,M | clipped-gossip[:TAU]
    attack: str = ""  # what attackers do: sign-flip | scale[:K] | noise[:S] | nan | inf | stale | label-flip
    attackers: int = 0  # nodes that attack (chosen with the seed); needs attack
    fail: tuple[str, ...] = ()  # crashes: "node=3,round=10" = node 3 dies after round 10
    recover: tuple[str, ...] = ()  # recoveries: "node=3,round=15" = back once the others did round 15
    join: tuple[str, ...] = ()  # late joiners: "node=5,round=8" = starts afresh once the others did round 8
    dp: str = ""  # differential privacy: "" (off) | sample (DP-SGD, Opacus) | update (noised round update)
    target_epsilon: float = 0.0  # >0: pick the noise so epsilon after all rounds is <= this
    noise: float = 0.0  # noise multiplier (noise std / clip) when no target_epsilon
    clip: float = 1.0  # L2 bound: per-sample gradient (sample) or round update (update)
    delta: float = 1e-5  # delta of the reported (epsilon, delta)
    secure_aggregation: bool = False  # masked pairwise sums: a node learns only its neighbours' weighted sum
    out: str | None = None  # directory for metrics.jsonl / summary.json; None = no files

    def __post_init__(self) -> None:
        positive = {
            "rounds": self.rounds, "local_epochs": self.local_epochs, "batch_size": self.batch_size,
        }
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(key, f"must be >= 1, got {value}")
        if self.nodes is not None and self.nodes < 1:
            raise ConfigError("nodes", f"must be >= 1, got {self.nodes}")
        if self.local_steps < 0:
            raise ConfigError("local_steps", f"must be >= 0 (0 = use local_epochs), got {self.local_steps}")
        if self.fail or self.recover or self.join:
            from p2pfl.simulation.churn import parse_joins, parse_outages

            parse_joins(self.join, parse_outages(self.fail, self.recover))
        if self.torch_threads < 0:
            raise ConfigError("torch_threads", f"must be >= 0 (0 = torch's default), got {self.torch_threads}")
        if self.fanout < 0:
            raise ConfigError("fanout", f"must be >= 0 (0 = static topology), got {self.fanout}")
        if not 0 < self.lr < math.inf:
            raise ConfigError("lr", f"must be a finite number > 0, got {self.lr}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError("seed", f"must be in 0 .. 2**32-1 (numpy's seed range), got {self.seed}")
        self._check_mixing()
        self._check_device()
        if not 0 <= self.momentum < 1:
            raise ConfigError("momentum", f"must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.transport not in TRANSPORTS:
            raise ConfigError("transport", f"must be one of {', '.join(TRANSPORTS)}, got {self.transport!r}")
        if self.curve and self.transport == "inproc":
            raise ConfigError("curve", "CurveZMQ needs a network transport: use transport = \"tcp\" or \"ipc\"")
        if not self.round_timeout > 0:
            raise ConfigError("round_timeout", f"must be > 0 seconds, got {self.round_timeout}")
        self._check_speeds()
        if not 0 < self.test_fraction < 1:
            raise ConfigError("test_fraction", f"must be in (0, 1), got {self.test_fraction}")
        self._check_byzantine()
        self._check_privacy()
        self._check_secure_aggregation()

    def _check_mixing(self) -> None:
        from p2pfl.errors import TopologyError
        from p2pfl.topology.mixing import resolve_mixing_method

        try:
            resolve_mixing_method(self.mixing)
        except TopologyError as exc:
            raise ConfigError("mixing", str(exc)) from None

    def _check_device(self) -> None:
        if self.device == "cpu":
            return
        import torch  # only for a device other than the CPU: importing p2pfl stays light

        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ConfigError("device", f"{self.device!r} is not a torch device: use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "device", f"{self.device!r}, but this torch has no usable CUDA (built for "
                f"{'CPU only' if torch.version.cuda is None else 'CUDA ' + torch.version.cuda}, "
                f"{torch.cuda.device_count()} GPUs visible): use device = \"cpu\" or a CUDA build of torch",
            )

    def _check_speeds(self) -> None:
        from p2pfl.node.records import check_mode

        check_mode(self.mode, self.staleness, self.staleness_grace)
        if self.slow_nodes < 0:
            raise ConfigError("slow_nodes", f"must be >= 0, got {self.slow_nodes}")
        if self.nodes is not None and self.slow_nodes > self.nodes:
            raise ConfigError("slow_nodes", f"at most nodes = {self.nodes}, got {self.slow_nodes}")
        if not self.slowdown >= 1:
            raise ConfigError("slowdown", f"must be >= 1 (how many times slower), got {self.slowdown}")
        if self.slow_nodes and self.slowdown == 1:
            raise ConfigError("slowdown", f"{self.slow_nodes} slow nodes need slowdown > 1, e.g. slowdown = 5")
        if self.slowdown != 1 and not self.slow_nodes:
            raise ConfigError("slow_nodes", f"slowdown {self.slowdown} applies to slow_nodes >= 1")
        if not self.step_seconds >= 0:
            raise ConfigError("step_seconds", f"must be >= 0 (0 = as fast as this machine), got {self.step_seconds}")

    def _check_secure_aggregation(self) -> None:
        if not self.secure_aggregation:
            return
        if self.mode == "async":
            raise ConfigError("secure_aggregation", "needs the round barrier: use mode = \"sync\"")
        if self.aggregator != "mean":
            raise ConfigError(
                "secure_aggregation",
                f"aggregator {self.aggregator!r} needs each neighbour's model; secure aggregation "
                "reveals only their sum: use aggregator = \"mean\"",
            )
        if self.fanout:
            raise ConfigError(
                "secure_aggregation",
                "needs a static topology (fanout = 0): random peers give neighbourhoods under 3",
            )
        if self.attack:
            raise ConfigError("secure_aggregation", "attack simulations are not supported with secure aggregation")

    def _check_byzantine(self) -> None:
        # imported only when used: both parsers are torch-free, but need numpy
        if self.aggregator != "mean":
            from p2pfl.aggregation import build_aggregator

            build_aggregator(self.aggregator)  # raises ConfigError("aggregator", ...)
        if self.attackers < 0:
            raise ConfigError("attackers", f"must be >= 0, got {self.attackers}")
        if self.attackers and not self.attack:
            raise ConfigError("attack", f"{self.attackers} attackers need an attack, e.g. attack = \"scale:100\"")
        if self.attack and not self.attackers:
            raise ConfigError("attackers", f"attack {self.attack!r} needs attackers >= 1")
        if self.attack:
            from p2pfl.attacks import parse_attack

            parse_attack(self.attack)  # raises ConfigError("attack", ...)
        if self.nodes is not None and self.attackers > self.nodes - 1:
            raise ConfigError("attackers", f"at most nodes - 1 = {self.nodes - 1} (one node must be honest), got {self.attackers}")

    def _check_privacy(self) -> None:
        if self.dp not in DP_MODES:
            raise ConfigError("dp", f"must be one of sample, update or \"\" (off), got {self.dp!r}")
        if self.target_epsilon < 0:
            raise ConfigError("target_epsilon", f"must be >= 0 (0 = fixed noise), got {self.target_epsilon}")
        if self.noise < 0:
            raise ConfigError("noise", f"must be >= 0, got {self.noise}")
        if not self.clip > 0:
            raise ConfigError("clip", f"must be > 0, got {self.clip}")
        if not 0 < self.delta < 1:
            raise ConfigError("delta", f"must be in (0, 1), got {self.delta}")
        if not self.dp:
            if self.target_epsilon or self.noise:
                field = "target_epsilon" if self.target_epsilon else "noise"
                raise ConfigError(field, "only applies with differential privacy: set dp = \"sample\" or \"update\"")
            return
        if self.target_epsilon and self.noise:
            raise ConfigError("noise", "give noise or target_epsilon, not both (the target picks the noise)")
        if not (self.target_epsilon or self.noise):
            raise ConfigError(
                "target_epsilon", f"dp = {self.dp!r} needs target_epsilon > 0 or noise > 0 (else epsilon is infinite)"
            )
