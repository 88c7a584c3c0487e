"""``--cluster`` and ``--shard-size``: checked like every key, one line without Ray, Ray never imported by p2pfl."""

from __future__ import annotations

import subprocess
import sys

import pytest

from p2pfl.cli.main import main
from p2pfl.errors import ConfigError
from p2pfl.simulation.cluster import RAY_MISSING, plan_shards, run_cluster
from p2pfl.simulation.config import ExperimentConfig


@pytest.mark.parametrize("value", ["ray", "auto", "ray://head.example:10001", ""])
def test_cluster_values(value):
    assert ExperimentConfig(cluster=value).cluster == value


@pytest.mark.parametrize("value", ["yes", "ray://head", "tcp://head:1"])
def test_bad_cluster_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match="cluster"):
        ExperimentConfig(cluster=value)


def test_what_shards_cannot_share_yet_is_refused():
    with pytest.raises(ConfigError, match="recover.*cannot run on a cluster"):
        ExperimentConfig(cluster="ray", fail=("node=1,round=1",), recover=("node=1,round=2",))


def test_shards_are_consecutive_and_default_to_one_per_cpu():
    names = [str(i) for i in range(7)]
    assert plan_shards(names, 0, 2) == [names[:4], names[4:]]
    assert plan_shards(names, 3, 2) == [names[:3], names[3:6], names[6:]]


def test_without_ray_the_cli_says_how_to_install_it_in_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert main(["simulate", "--cluster", "ray", "--nodes", "2", "--rounds", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and RAY_MISSING in err
    assert "pip install 'p2pfl-gossip[cluster]'" in err


def test_importing_p2pfl_and_the_cluster_modules_imports_no_ray():
    code = (
        "import sys, p2pfl, p2pfl.cli.main, p2pfl.simulation.cluster, p2pfl.simulation.cluster_shard; "
        "sys.exit('ray' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_no_cluster_to_join_is_one_line_naming_the_key(monkeypatch):
    class NoCluster:  # a Ray that finds no cluster, as ray.init(address="auto") does then
        @staticmethod
        def is_initialized():
            return False

        @staticmethod
        def init(**kwargs):
            raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setitem(sys.modules, "ray", NoCluster)
    with pytest.raises(ConfigError, match="cluster: no Ray cluster running on this machine"):
        run_cluster(ExperimentConfig(cluster="auto"), experiment=object())  # type: ignore[arg-type]
