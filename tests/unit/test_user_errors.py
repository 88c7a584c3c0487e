"""Mistakes a user makes end in one clear project error, not a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from p2pfl.cli.main import EXIT_CODES, main
from p2pfl.data import load_dataset, partition
from p2pfl.errors import ConfigError, DataError
from p2pfl.simulation.recorder import MetricsRecorder
from p2pfl.simulation.setup import check_model_fits, make_model


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# --- data ----------------------------------------------------------------------


def test_a_binary_file_given_as_csv_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "file.npz"
    np.savez(path, x=np.zeros((3, 2)), y=np.arange(3))
    with pytest.raises(DataError, match=r"csv file .*file\.npz is not UTF-8 text CSV"):
        load_dataset(f"csv:{path}")


def _target_first_csv(tmp_path: Path) -> Path:
    """The class first and a random 0/1 column last, which used to be taken as the label."""
    rng = np.random.default_rng(0)
    rows = [f"{k % 3},{rng.normal():.4f},{rng.normal():.4f},{rng.integers(2)}" for k in range(60)]
    path = tmp_path / "targetfirst.csv"
    path.write_text("target,a,b,organic\n" + "\n".join(rows) + "\n")
    return path


def test_data_command_needs_the_csv_label_column_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _target_first_csv(tmp_path)
    args = ["data", "--nodes", "4", "--partition", "iid"]
    assert main([*args, "--dataset", f"csv:{path}"]) == EXIT_CODES[DataError] == 4
    assert one_error_line(capsys) == (
        f"p2pfl: error: csv file {path} has no column named 'label': name the label column with "
        f"--dataset csv:{path},label=COLUMN (columns: target, a, b, organic; perhaps label=target)\n"
    )
    assert main([*args, "--dataset", f"csv:{path},label=target"]) == 0
    assert "3 classes" in capsys.readouterr().out


def test_experiment_file_names_the_csv_label_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _target_first_csv(tmp_path)
    toml = tmp_path / "exp.toml"
    base = 'nodes = 3\nrounds = 1\npartition = "iid"\nmodel = "logreg"\n'
    toml.write_text(base + f'dataset = "csv:{path}"\n')
    assert main(["simulate", "--quiet", "--config", str(toml)]) == 4
    assert "name the label column with --dataset" in one_error_line(capsys)
    toml.write_text(base + f'dataset = "csv:{path},label=target"\n')
    assert main(["simulate", "--quiet", "--config", str(toml)]) == 0


def test_partition_errors_name_what_a_user_can_change() -> None:
    with pytest.raises(DataError) as too_many:
        partition(np.arange(10) % 2, 6, "iid", seed=0)
    with pytest.raises(DataError) as shards:
        partition(np.repeat(np.arange(10), 10), 20, "shards:6", seed=0)
    for exc in (too_many, shards):
        assert "min_samples" not in str(exc.value)
    assert "use at most 5 nodes" in str(too_many.value)
    assert "use fewer shards per node or fewer nodes" in str(shards.value)


def test_data_command_with_no_nodes_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "--nodes", "0"]) == EXIT_CODES[ConfigError]
    assert one_error_line(capsys) == "p2pfl: error: nodes: must be >= 1, got 0\n"


# --- output paths ------------------------------------------------------------------


def test_out_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("")
    with pytest.raises(ConfigError, match=r"^out: .*taken is a file, not a folder"):
        MetricsRecorder(["a"], taken)
    with pytest.raises(ConfigError, match=r"^out: cannot write .*taken/sub"):
        MetricsRecorder(["a"], taken / "sub")


def test_simulate_out_that_is_a_file_fails_before_the_progress_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "taken"
    taken.write_text("")
    assert main(["simulate", "--nodes", "3", "--rounds", "1", "--out", str(taken)]) == EXIT_CODES[ConfigError]
    assert "out: " in one_error_line(capsys)


def test_topology_drawing_creates_folders_and_follows_the_suffix(tmp_path: Path) -> None:
    png = tmp_path / "new" / "dir" / "g.png"
    svg = tmp_path / "g.svg"
    assert main(["topology", "show", "ring", "--nodes", "5", "--png", str(png)]) == 0
    assert main(["topology", "show", "ring", "--nodes", "5", "--png", str(svg)]) == 0
    assert png.read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in svg.read_bytes()[:500]


def test_topology_drawing_refuses_an_unknown_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "show", "ring", "--nodes", "5", "--png", str(tmp_path / "g.xyz")]) == 2
    assert "unknown image format '.xyz'" in one_error_line(capsys)
    (tmp_path / "file").write_text("")
    assert main(["topology", "show", "ring", "--nodes", "5", "--png", str(tmp_path / "file" / "g.png")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_topology_save_creates_folders_and_names_a_blocked_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["topology", "save", "ring", "--nodes", "5", str(tmp_path / "new" / "r.txt")]) == 0
    assert (tmp_path / "new" / "r.txt").exists()
    (tmp_path / "file").write_text("")
    assert main(["topology", "save", "ring", "--nodes", "5", str(tmp_path / "file" / "r.txt")]) == 2
    assert "file: cannot write" in capsys.readouterr().err


def test_report_to_a_path_under_a_file_is_a_config_error(tmp_path: Path) -> None:
    from p2pfl.report import write_report

    (tmp_path / "metrics.jsonl").write_text('{"node": "0", "round": 0}\n')
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="^to: cannot make the folder"):
        write_report(tmp_path, tmp_path / "file" / "plots")


# --- user models ---------------------------------------------------------------------


@pytest.fixture
def user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package in the current folder, which is not on sys.path (as for the console script)."""
    name = f"userpkg_{uuid.uuid4().hex[:8]}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / name / "models.py").write_text(
        "from torch import nn\n"
        "def build(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], num_classes))\n"
        "def wrong_size(input_shape, num_classes):\n"
        "    return nn.Linear(10, num_classes)\n"
        "def float64(input_shape, num_classes):\n"
        "    return nn.Linear(input_shape[0], num_classes).double()\n"
        "def image(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, num_classes))\n"
        "def broken(input_shape, num_classes):\n"
        "    raise RuntimeError('needs a GPU')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    return name


def test_a_model_package_in_the_current_folder_is_found_and_sys_path_restored(user_package: str) -> None:
    before = list(sys.path)
    model = make_model(f"{user_package}.models:build", (64,), 10)
    assert isinstance(model, nn.Module)
    assert sys.path == before


def test_a_builder_that_raises_is_a_config_error(user_package: str) -> None:
    with pytest.raises(ConfigError, match=r"^model: .*models:broken\(\(64,\), 10\) raised RuntimeError: needs a GPU"):
        make_model(f"{user_package}.models:broken", (64,), 10)
    with pytest.raises(ConfigError, match=r"^model: cannot load 'nowhere_\w+:f' \(ModuleNotFoundError"):
        make_model(f"nowhere_{uuid.uuid4().hex[:8]}:f", (64,), 10)


@pytest.mark.parametrize(
    ("function", "needle"),
    [("wrong_size", "shapes cannot be multiplied"), ("float64", "dtype"), ("image", "conv2d")],
)
def test_a_model_that_does_not_fit_the_data_fails_in_one_line(
    user_package: str, function: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["simulate", "--quiet", "--nodes", "3", "--rounds", "1", "--model", f"{user_package}.models:{function}"])
    assert code == EXIT_CODES[ConfigError]
    line = one_error_line(capsys)
    assert needle in line
    # says the inputs are flat, which a user writing a CNN needs to know
    assert "inputs of shape (batch, 64) (flat features" in line and "return (batch, 10) class scores" in line


def test_cnn_on_flat_data_says_it_needs_an_image_dataset() -> None:
    with pytest.raises(ConfigError, match="cnn model needs an image dataset such as digits") as exc:
        make_model("cnn", (30,), 2)
    assert "image=True" not in str(exc.value)


class _Noisy(nn.Module):
    """Dropout draws from torch's RNG; batch norm updates its statistics in training."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(64)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.norm(x)))


def test_the_model_check_leaves_the_rng_and_the_model_untouched() -> None:
    dataset = load_dataset("digits")
    model = _Noisy()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    check_model_fits("noisy", model, dataset, np.arange(16), "cpu")
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_report_ticks_whole_rounds_only(tmp_path: Path) -> None:
    import json

    from p2pfl import report

    rows = [{"node": str(n), "round": r, "test_accuracy": 0.5, "consensus_distance": 0.1,
             "bytes_sent": 10, "bytes_received": 10} for n in range(2) for r in range(2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    figures = report.draw_report(tmp_path)
    for fig in figures.values():
        fig.canvas.draw()  # ticks are placed when drawn
    # the first panel of each figure has rounds on its x axis
    ticks = {name: list(fig.axes[0].get_xticks()) for name, fig in figures.items()}
    assert set(ticks) == {"accuracy.png", "consensus.png", "bytes.png"}
    assert all(float(t).is_integer() for values in ticks.values() for t in values), ticks


# --- issue 16: runs that are kept, options, early checks ------------------------------

TINY = ["simulate", "--nodes", "4", "--rounds", "1", "--local-steps", "1", "--quiet"]


def _old_run(folder: Path) -> None:
    """What an earlier run and its report left, and a file of the user's own."""
    (folder / "models").mkdir(parents=True)
    for name in ("metrics.jsonl", "summary.json", "accuracy.png", "bytes.png", "models/9.pt", "notes.png"):
        (folder / name).write_text("old")


def test_out_holding_a_run_is_refused_unless_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    _old_run(run)
    assert main([*TINY, "--out", str(run)]) == EXIT_CODES[ConfigError]
    line = one_error_line(capsys)
    assert line.startswith(f"p2pfl: error: out: {run} already holds a run (metrics.jsonl, summary.json)")
    assert "--overwrite" in line
    assert (run / "metrics.jsonl").read_text() == "old" and (run / "accuracy.png").exists()

    assert main([*TINY, "--out", str(run), "--overwrite"]) == 0
    # the old run's plots and models are gone, the user's file stays
    assert not (run / "accuracy.png").exists() and not (run / "bytes.png").exists()
    assert not (run / "models" / "9.pt").exists()
    assert (run / "notes.png").read_text() == "old"
    assert json.loads((run / "summary.json").read_text())["rounds_completed"] == 1


def test_simulate_saves_each_model_and_their_average_as_plain_state_dicts(tmp_path: Path) -> None:
    assert main([*TINY, "--out", str(tmp_path / "run")]) == 0
    models = tmp_path / "run" / "models"
    assert sorted(p.name for p in models.iterdir()) == ["0.pt", "1.pt", "2.pt", "3.pt", "average.pt"]
    states = [torch.load(models / f"{i}.pt", weights_only=True) for i in range(4)]
    average = torch.load(models / "average.pt", weights_only=True)
    model = make_model("mlp", (64,), 10)
    model.load_state_dict(average)  # exactly the model's keys and shapes
    for key, value in average.items():
        assert torch.allclose(value, torch.stack([s[key] for s in states]).mean(0), atol=1e-6)

    assert main([*TINY, "--out", str(tmp_path / "bare"), "--no-save-models"]) == 0
    assert not (tmp_path / "bare" / "models").exists()


def test_without_out_the_run_says_once_that_nothing_was_saved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(TINY) == 0
    captured = capsys.readouterr()
    assert captured.err == "nothing saved: pass --out DIR to keep metrics, summary and models\n"
    assert "accuracy mean" in captured.out
    assert list(tmp_path.iterdir()) == []


def test_log_level_is_checked_and_global_options_follow_the_command_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as loud:
        main(["--log-level", "LOUD", "simulate", "--print-config"])
    assert loud.value.code == 2
    assert "invalid choice: 'LOUD' (choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR')" in capsys.readouterr().err
    assert main(["simulate", "--log-level", "info", "--print-config"]) == 0
    assert main(["topology", "show", "ring", "--nodes", "4", "--log-level", "ERROR", "--json"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as version:
        main(["simulate", "--version"])
    assert version.value.code == 0
    assert capsys.readouterr().out.startswith("p2pfl ")


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["simulate", "--nodse", "3"], "(did you mean --nodes?)"),
        (["data", "--seeed", "1"], "(did you mean --seed?)"),
        (["topology", "show", "ring", "--ndoes", "4"], "(did you mean --nodes?)"),
    ],
)
def test_a_misspelt_option_gets_the_closest_one(
    argv: list[str], suggestion: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unrecognized arguments: " in last and last.endswith(suggestion), last


def test_churn_help_and_reference_name_nodes_the_same_way() -> None:
    from p2pfl.cli.main import build_parser

    simulate = next(a for a in build_parser()._actions if a.dest == "command").choices["simulate"]
    helps = {a.dest: a.help or "" for a in simulate._actions}
    reference = (Path(__file__).resolve().parents[2] / "docs" / "reference" / "cli.md").read_text()
    for key in ("fail", "recover", "join"):
        assert "node=NAME,round=R" in helps[key]
        assert f"`--{key} node=NAME,round=R`" in reference
    assert "node=N," not in reference


# A refused config must not cost the 4-9 s of importing torch: each check runs in a fresh
# interpreter, which reports its exit code and whether torch got imported.
_REFUSE = (
    "import sys; from p2pfl.cli.main import main; code = main(sys.argv[1:]); "
    "print(code, 'torch' in sys.modules)"
)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--partition", "dirichlet:0"], 4, "partition: dirichlet needs a concentration alpha > 0"),
        (["--partition", "shards"], 4, "partition: 'shards' needs a parameter"),
        (["--topology", "rong"], 3, "topology: unknown topology generator 'rong'"),
        (["--topology", "torus:rows=4"], 3, "topology: torus: unknown parameter 'rows'"),
        (["--topology", "missing.json"], 3, "topology: file not found: missing.json"),
        (["--model", "mpl"], 2, "model: unknown model 'mpl' (did you mean 'mlp'?)"),
        (["--dataset", "digts"], 4, "dataset: unknown dataset 'digts' (did you mean 'digits'?)"),
        (["--aggregator", "krum:x"], 2, "aggregator: "),
        (["--attack", "flip", "--attackers", "1"], 2, "attack: unknown attack 'flip'"),
        (["--out", "taken/run"], 2, "out: cannot create taken/run: taken is a file"),
        (["--print-config", "--partition", "dirichlet:0"], 4, "partition: "),
        (["--print-config", "--model", "mpl"], 2, "model: "),
    ],
)
def test_config_is_refused_before_torch_is_imported(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    (tmp_path / "taken").write_text("")
    done = subprocess.run(
        [sys.executable, "-c", _REFUSE, "simulate", "--quiet", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert done.stdout.split() == [str(code), "False"], done.stdout + done.stderr
    assert done.stderr.startswith(f"p2pfl: error: {message}"), done.stderr
    assert done.stderr.count("\n") == 1


def test_builtin_model_names_are_the_ones_the_config_accepts() -> None:
    from p2pfl.learning.models import available_models
    from p2pfl.learning.spec import BUILTIN_MODELS

    assert available_models() == sorted(BUILTIN_MODELS)
