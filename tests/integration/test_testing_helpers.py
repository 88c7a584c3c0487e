"""p2pfl.testing's node helpers: N connected nodes start, gossip, and are always stopped."""

from __future__ import annotations

import pytest

import p2pfl.netfault
import p2pfl.testing
from p2pfl import NodeError, build_topology
from p2pfl.testing import connected_nodes, run_all

TIMEOUT = 30.0


async def test_every_node_of_a_ring_hears_its_neighbours_every_round():
    async with connected_nodes("ring", 4, rounds=3) as nodes:
        assert [node.name for node in nodes] == ["0", "1", "2", "3"]
        histories = await run_all(nodes, timeout=TIMEOUT)
    neighbours = {"0": ("1", "3"), "1": ("0", "2"), "2": ("1", "3"), "3": ("0", "2")}
    for name, history in histories.items():
        assert [m.round for m in history] == [0, 1, 2]
        assert all(tuple(sorted(m.received_from)) == neighbours[name] for m in history)
        assert all(m.missing == () for m in history)


async def test_over_tcp_a_node_that_is_down_is_missed_every_round():
    async with connected_nodes(build_topology("ring", 3), transport="tcp", down={"2"},
                               rounds=1, round_timeout=0.5) as nodes:
        assert [node.endpoint.startswith("tcp://127.0.0.1:") for node in nodes] == [True, True]
        histories = await run_all(nodes, timeout=TIMEOUT)
    assert [[m.received_from for m in h] for h in histories.values()] == [[("1",)], [("0",)]]
    assert all(m.missing == ("2",) for h in histories.values() for m in h)


async def test_the_nodes_are_stopped_when_the_block_fails():
    with pytest.raises(RuntimeError, match="inside"):
        async with connected_nodes("line", 2, rounds=1) as nodes:
            raise RuntimeError("inside")
    for node in nodes:
        with pytest.raises(NodeError, match="not started"):
            await node.wait_until(lambda stats: True, 1.0)


async def test_bad_arguments_are_refused_before_anything_starts():
    with pytest.raises(ValueError, match="transport"):
        async with connected_nodes(transport="udp"):
            pass
    with pytest.raises(ValueError, match="down names"):
        async with connected_nodes("ring", 3, down={"9"}):
            pass


def test_the_old_names_still_import():
    assert p2pfl.netfault.FaultProxy is p2pfl.testing.FaultProxy
    assert p2pfl.netfault.ProxyLink is p2pfl.testing.ProxyLink
    for name in p2pfl.testing.__all__:
        assert getattr(p2pfl.testing, name) is not None
    with pytest.raises(AttributeError):
        p2pfl.testing.no_such_helper  # noqa: B018
