"""The simulation's preflight: socket cap and open-file limit raised, or one line saying what to change."""

from __future__ import annotations

import pytest
import zmq

from p2pfl.errors import ConfigError
from p2pfl.simulation import limits
from p2pfl.simulation.limits import FD_SLACK, SOCKET_SLACK, needs, prepare_limits


def test_inproc_nodes_need_two_sockets_each_whatever_their_degree():
    wanted = needs("inproc", [4] * 1000)
    assert wanted.sockets == 2000 + SOCKET_SLACK
    assert wanted.files == 2000 + FD_SLACK
    assert needs("inproc", [0]).sockets == 1 + SOCKET_SLACK  # no peer: no sending socket


def test_tcp_nodes_need_a_socket_and_a_monitor_per_peer_and_two_descriptors_per_link():
    wanted = needs("tcp", [4] * 10)
    assert wanted.sockets == 10 * 3 * 5 + SOCKET_SLACK
    assert wanted.files == 10 * (15 + 8 + 1) + FD_SLACK


def test_the_context_socket_cap_is_raised_from_the_node_count():
    context = zmq.Context()
    try:
        wanted = needs("inproc", [4] * 4000)
        prepare_limits(context, wanted, "inproc")
        assert context.get(zmq.MAX_SOCKETS) == wanted.sockets
        context.socket(zmq.ROUTER).close()  # the context still works with it
    finally:
        context.term()


def test_more_sockets_than_libzmq_allows_is_one_line_naming_inproc():
    context = zmq.Context()
    try:
        with pytest.raises(ConfigError) as error:
            prepare_limits(context, needs("tcp", [999] * 1000), "tcp")
    finally:
        context.term()
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("nodes: 1000 nodes on tcp need 3000064 ZeroMQ sockets")
    assert 'use fewer nodes or transport = "inproc"' in message


def test_a_hard_open_file_limit_too_low_is_one_line_saying_how_to_raise_it(monkeypatch):
    monkeypatch.setattr(limits.resource, "getrlimit", lambda _: (100, 500))
    monkeypatch.setattr(limits, "_open_now", lambda: 10)
    with pytest.raises(ConfigError) as error:
        limits.raise_open_files(needs("inproc", [4] * 1000), "inproc")
    message = str(error.value)
    assert "\n" not in message
    assert f"need about {2000 + FD_SLACK + 10} open files, over this process's hard limit of 500" in message
    assert "ulimit -Hn" in message and "limits.conf" in message


def test_the_soft_open_file_limit_is_raised_to_the_hard_one_only_when_needed(monkeypatch):
    calls = []
    monkeypatch.setattr(limits.resource, "getrlimit", lambda _: (1024, 20000))
    monkeypatch.setattr(limits.resource, "setrlimit", lambda which, value: calls.append(value))
    monkeypatch.setattr(limits, "_open_now", lambda: 10)
    limits.raise_open_files(needs("inproc", [4] * 100), "inproc")
    assert calls == []  # 200 sockets fit in 1,024
    limits.raise_open_files(needs("inproc", [4] * 1000), "inproc")
    assert calls == [(20000, 20000)]


def test_too_little_memory_for_the_nodes_is_one_line_with_the_per_node_estimate():
    model = 40 * 2**20  # a 10M-parameter model
    limits.check_memory([4] * 8, model, available=2**40)  # fits
    with pytest.raises(ConfigError) as error:
        limits.check_memory([4] * 1000, model, available=16 * 2**30)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("nodes: 1000 nodes need about 430.2 GB to run (440.5 MB per node: ")
    assert "use at most 37 nodes, a smaller model or a machine with more memory" in message
