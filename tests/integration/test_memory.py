"""Model copies per node with a model of some size: a regression bound, not a benchmark.

A 4-node ring trains a ~4.2M-parameter MLP (17 MB) for 3 rounds in a fresh process,
over inproc and tcp; its peak RSS beyond the built learners, in models per node, must
stay under a bound (issue 14's degree + 5 = 7, the learner's own model included, plus
a margin).
The child maps every allocation of 1 MB or more on its own (``MALLOC_MMAP_THRESHOLD_``),
so RSS counts the live buffers: glibc otherwise serves 16 MB tensors from its heap after
the first is freed, and what the heap keeps after a free is slack, not a copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

pytestmark = pytest.mark.slow

#: degree (2 on a ring) + 5, issue 14's bound, plus one: at this size what a node holds
#: besides models (sockets, torch's workspace, ~15 MB) is most of a 17 MB model. Measured
#: 5.9 (inproc) and 7.1 (tcp); the code before issue 14 held 10-14 models per node.
MAX_COPIES = 8.0

_CHILD = """
import json, resource, sys
sys.path.insert(0, {here!r})
from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.setup import build_experiment
from p2pfl.simulation.simulator import run_simulation

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

config = ExperimentConfig(nodes=4, topology="ring", model="{module}:wide_mlp", rounds=3, local_steps=2,
                          transport={transport!r}, round_timeout=120.0)
experiment = build_experiment(config)
model_mb = sum(a.nbytes for a in experiment.learners[0].get_weights().values()) / 2**20
built = rss_mb()
result = run_simulation(config, experiment=experiment)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"copies": 1 + (peak - built) / (4 * model_mb),
                   "rounds": result.summary["rounds_completed"]}}))
"""


def wide_mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """~4.2M parameters on digits: one 2,000 x 2,000 layer holds most."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 2000), nn.ReLU(), nn.Linear(2000, 2000), nn.ReLU(), nn.Linear(2000, num_classes)
    )


@pytest.mark.parametrize("transport", ["inproc", "tcp"])
def test_model_copies_per_node_stay_bounded(transport: str) -> None:
    here = Path(__file__).resolve()
    code = _CHILD.format(here=str(here.parent), module=here.stem, transport=transport)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=300, env=env
    )
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["rounds"] == 3
    print(f"{transport}: {row['copies']:.2f} model copies per node")
    assert row["copies"] <= MAX_COPIES, f"{row['copies']:.1f} model copies per node over {transport}"
