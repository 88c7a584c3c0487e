"""The experiment description a simulation (and its plain reference loop) runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from p2pfl.errors import ConfigError
from p2pfl.settings import DP_MODES, TRANSPORTS, setting, validate

__all__ = ["DP_MODES", "TRANSPORTS", "ExperimentConfig"]


@dataclass(frozen=True)
class ExperimentConfig:
    """One simulated experiment; TOML keys, ``key=value`` overrides and the flags of
    ``p2pfl simulate`` use these names. What each key means, its bounds and its help
    text are in :mod:`p2pfl.settings`."""

    nodes: int | None = setting("nodes")
    topology: str = setting("topology")
    mixing: str = setting("mixing")
    fanout: int = setting("fanout")
    dataset: str = setting("dataset")
    partition: str = setting("partition")
    model: str = setting("model")
    metrics: tuple[str, ...] = setting("metrics")
    rounds: int = setting("rounds")
    local_epochs: int = setting("local_epochs")
    local_steps: int = setting("local_steps")
    lr: float = setting("lr")
    momentum: float = setting("momentum")
    weight_decay: float = setting("weight_decay")
    batch_size: int = setting("batch_size")
    seed: int = setting("seed")
    transport: str = setting("transport")
    curve: bool = setting("curve")
    round_timeout: float = setting("round_timeout")
    mode: str = setting("mode")
    staleness: float = setting("staleness")
    staleness_grace: int = setting("staleness_grace")
    compress: str = setting("compress")
    gossip: str = setting("gossip")
    slow_nodes: int = setting("slow_nodes")
    slowdown: float = setting("slowdown")
    step_seconds: float = setting("step_seconds")
    test_fraction: float = setting("test_fraction")
    device: str = setting("device")
    # Many simulated nodes share this machine's cores: one thread each, not torch's all.
    torch_threads: int = setting("torch_threads", default=1)
    pin_cpu: bool = setting("pin_cpu")
    cluster: str = setting("cluster")
    shard_size: int = setting("shard_size")
    aggregator: str = setting("aggregator")
    attack: str = setting("attack")
    attackers: int = setting("attackers")
    fail: tuple[str, ...] = setting("fail")
    recover: tuple[str, ...] = setting("recover")
    join: tuple[str, ...] = setting("join")
    dp: str = setting("dp")
    target_epsilon: float = setting("target_epsilon")
    noise: float = setting("noise")
    clip: float = setting("clip")
    delta: float = setting("delta")
    secure_aggregation: bool = setting("secure_aggregation")
    out: str | None = setting("out")
    save_models: bool = setting("save_models")

    def __post_init__(self) -> None:
        validate(self)
        # what the schema cannot check alone: each spec is parsed by the code that runs it,
        # here before anything is built or torch imported (errors name the key)
        self._check_specs()
        if self.fail or self.recover or self.join:
            from p2pfl.simulation.churn import parse_joins, parse_outages

            parse_joins(self.join, parse_outages(self.fail, self.recover))
        self._check_mixing()
        self._check_device()
        self._check_cluster()
        if self.aggregator != "mean":
            from p2pfl.aggregation import build_aggregator

            build_aggregator(self.aggregator)  # raises ConfigError("aggregator", ...)
        if self.attack:
            from p2pfl.attacks import parse_attack

            parse_attack(self.attack)  # raises ConfigError("attack", ...)

    def _check_mixing(self) -> None:
        from p2pfl.errors import TopologyError
        from p2pfl.topology.mixing import resolve_mixing_method

        try:
            resolve_mixing_method(self.mixing)
        except TopologyError as exc:
            raise ConfigError("mixing", str(exc)) from None

    def _check_cluster(self) -> None:
        # each of these needs state shared by all nodes (keys, the global round) that
        # shards do not share yet
        unsupported = [key for key in ("recover", "join", "curve", "secure_aggregation") if getattr(self, key)]
        if self.cluster and unsupported:
            raise ConfigError("cluster", f"{', '.join(unsupported)} cannot run on a cluster yet: run in one process")

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

    def _check_specs(self) -> None:
        from p2pfl.data import check_dataset_spec, parse_partition
        from p2pfl.errors import DataError, TopologyError
        from p2pfl.learning.spec import check_model_spec
        from p2pfl.simulation.outputs import out_dir_problem
        from p2pfl.topology.files import looks_like_path
        from p2pfl.topology.generators import check_generator_spec

        # a spec keeps its error's kind (exit code), with the key in front
        try:
            if not looks_like_path(self.topology):
                check_generator_spec(self.topology)
            elif not Path(self.topology).is_file():
                raise TopologyError(f"file not found: {self.topology}")
        except TopologyError as exc:
            raise TopologyError(f"topology: {exc}") from None
        for key, check in (("dataset", check_dataset_spec), ("partition", parse_partition)):
            try:
                check(getattr(self, key))
            except DataError as exc:
                raise DataError(f"{key}: {exc}") from None
        check_model_spec(self.model)
        if self.out:
            problem = out_dir_problem(self.out)
            if problem is not None:
                raise ConfigError("out", problem)
