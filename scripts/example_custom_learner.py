#!/usr/bin/env python3
"""Your own model and data on p2pfl's Node API, without the simulator.

Four nodes in one process, each with its own private ``DataLoader`` and a model class of
its own, gossip over TCP loopback on a ring. A deployment runs exactly this ``Node`` code,
one per process, with real addresses instead of ``127.0.0.1:0``.

    python scripts/example_custom_learner.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import torch
import zmq
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from p2pfl import Node, NodeConfig, StaticSchedule, TorchLearner, ZmqTransport, build_topology


class TwoLayerNet(nn.Module):
    """Any nn.Module works: p2pfl shares every floating-point entry of its state_dict."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.BatchNorm1d(32), nn.Linear(32, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def private_data(node: int) -> tuple[DataLoader, DataLoader]:
    """Stand-in for an organisation's own files: a 3-class problem, shifted per node."""
    generator = torch.Generator().manual_seed(node)
    centers = torch.randn(3, 10, generator=torch.Generator().manual_seed(0)) * 3
    labels = torch.randint(0, 3, (300,), generator=generator)
    x = centers[labels] + torch.randn(300, 10, generator=generator) + 0.3 * node
    train = TensorDataset(x[:240], labels[:240])
    test = TensorDataset(x[240:], labels[240:])
    loader_rng = torch.Generator().manual_seed(100 + node)
    return DataLoader(train, batch_size=32, shuffle=True, generator=loader_rng), DataLoader(test, batch_size=60)


async def main(rounds: int, nodes: int) -> None:
    topology = build_topology("ring", nodes)
    schedule = StaticSchedule(topology)
    context = zmq.Context()
    torch.manual_seed(0)
    initial = TwoLayerNet().state_dict()  # everyone starts from the same model
    members = []
    for name in topology.names:
        model = TwoLayerNet()
        model.load_state_dict(initial)
        train, test = private_data(int(name))
        learner = TorchLearner(
            model, torch.optim.Adam(model.parameters(), lr=0.01), train, test,
            local_epochs=1, seed=int(name),
        )
        config = NodeConfig(name=name, rounds=rounds, round_timeout=30)
        members.append(Node(config, learner, schedule, ZmqTransport(context, "tcp://127.0.0.1:0")))
    try:
        async with contextlib.AsyncExitStack() as stack:
            for node in members:
                await stack.enter_async_context(node)  # binds; node.endpoint is now real
            for node in members:
                for peer in schedule.peers(node.name):
                    node.add_peer(peer, next(m.endpoint for m in members if m.name == peer))
            histories = await asyncio.gather(*(node.run() for node in members))
    finally:
        context.term()
    for node, history in zip(members, histories, strict=True):
        last = history[-1]
        print(f"node {node.name}: round {last.round} accuracy {last.test_accuracy:.3f} "
              f"loss {last.test_loss:.3f} from {','.join(last.received_from)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.nodes))
