"""p2pfl: serverless federated learning over ZeroMQ.

Importing this package does nothing but define names: no threads, sockets, logging
handlers or torch imports happen until you use something (public names load lazily).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2pfl._lazy import lazy_exports
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

__version__ = "0.1.0"

# public name -> module that defines it (loaded on first access, PEP 562)
_LAZY = {
    "Aggregator": "p2pfl.aggregation.base",
    "AllowList": "p2pfl.security",
    "ArrayBatches": "p2pfl.learning.learner",
    "Consortium": "p2pfl.consortium",
    "CurveSecurity": "p2pfl.security",
    "DPSGD": "p2pfl.privacy",
    "DPSGDLearner": "p2pfl.privacy",
    "Dataset": "p2pfl.data",
    "EvalResult": "p2pfl.learning.learner",
    "ExperimentConfig": "p2pfl.simulation.config",
    "KeyPair": "p2pfl.security",
    "Learner": "p2pfl.learning.learner",
    "Message": "p2pfl.wire",
    "MqttPresence": "p2pfl.discovery",
    "Node": "p2pfl.node.node",
    "NodeConfig": "p2pfl.node.node",
    "NodeStats": "p2pfl.node.node",
    "OrgNodeConfig": "p2pfl.deploy.config",
    "RandomPeerSchedule": "p2pfl.topology",
    "RoundMetrics": "p2pfl.node.node",
    "RoundPlan": "p2pfl.topology",
    "SimulationResult": "p2pfl.simulation.simulator",
    "StartCondition": "p2pfl.node.peers",
    "StaticSchedule": "p2pfl.topology",
    "Topology": "p2pfl.topology",
    "TorchLearner": "p2pfl.learning.learner",
    "TrainResult": "p2pfl.learning.learner",
    "TransportOptions": "p2pfl.transport",
    "UpdateDP": "p2pfl.privacy",
    "UpdateDPLearner": "p2pfl.privacy",
    "WireLimits": "p2pfl.wire",
    "ZmqTransport": "p2pfl.transport",
    "build_aggregator": "p2pfl.aggregation",
    "build_experiment": "p2pfl.simulation.setup",
    "build_topology": "p2pfl.topology",
    "curve_authenticator": "p2pfl.security",
    "generate_keypair": "p2pfl.security",
    "init_consortium": "p2pfl.consortium",
    "label_counts": "p2pfl.data",
    "load_consortium": "p2pfl.consortium",
    "load_dataset": "p2pfl.data",
    "new_simulation_loop": "p2pfl.simulation.worker",
    "partition": "p2pfl.data",
    "run_cluster": "p2pfl.simulation.cluster",
    "run_org_node": "p2pfl.deploy.runner",
    "run_reference": "p2pfl.simulation.reference",
    "run_simulation": "p2pfl.simulation.simulator",
    "simulate": "p2pfl.simulation.simulator",
    "spectral_gap": "p2pfl.topology",
}

__all__ = sorted(
    [
        "ConfigError",
        "DataError",
        "NodeError",
        "P2PFLError",
        "PeersGoneError",
        "TopologyError",
        "TransportError",
        "WireError",
        "__version__",
        *_LAZY,
    ]
)


__getattr__, __dir__ = lazy_exports('p2pfl', globals(), _LAZY, __all__)


if TYPE_CHECKING:  # let type checkers and IDEs see the lazy names
    from p2pfl.aggregation import build_aggregator
    from p2pfl.aggregation.base import Aggregator
    from p2pfl.consortium import Consortium, init_consortium, load_consortium
    from p2pfl.data import Dataset, label_counts, load_dataset, partition
    from p2pfl.deploy.config import OrgNodeConfig
    from p2pfl.deploy.runner import run_org_node
    from p2pfl.discovery import MqttPresence
    from p2pfl.learning.learner import (
        ArrayBatches,
        EvalResult,
        Learner,
        TorchLearner,
        TrainResult,
    )
    from p2pfl.node.node import Node, NodeConfig, NodeStats, RoundMetrics
    from p2pfl.node.peers import StartCondition
    from p2pfl.privacy import DPSGD, DPSGDLearner, UpdateDP, UpdateDPLearner
    from p2pfl.security import AllowList, CurveSecurity, KeyPair, curve_authenticator, generate_keypair
    from p2pfl.simulation.cluster import run_cluster
    from p2pfl.simulation.config import ExperimentConfig
    from p2pfl.simulation.reference import run_reference
    from p2pfl.simulation.setup import build_experiment
    from p2pfl.simulation.simulator import SimulationResult, run_simulation, simulate
    from p2pfl.simulation.worker import new_simulation_loop
    from p2pfl.topology import (
        RandomPeerSchedule,
        RoundPlan,
        StaticSchedule,
        Topology,
        build_topology,
        spectral_gap,
    )
    from p2pfl.transport import TransportOptions, ZmqTransport
    from p2pfl.wire import Message, WireLimits
