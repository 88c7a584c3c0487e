"""``p2pfl consortium`` as a subprocess, and the deployment files in scripts/deploy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from p2pfl.security.keys import read_secret_key

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "scripts" / "deploy"
ROLLOUT = DEPLOY / "rollout.sh"
TIMEOUT = 60

DESCRIPTION = """\
name = "cancer-research"
topology = "ring"
[training]
rounds = 5
learner = "p2pfl.examples.bundled:build_learner"
learner_args = { dataset = "digits", nodes = 3 }
[[members]]
name = "charite"
host = "10.0.0.7"
port = 7002
[[members]]
name = "mayo"
host = "mayo.example.org"
port = 7002
[[members]]
name = "ki.se"
host = "10.0.0.9"
port = 7003
"""
HOSTS = {"charite": "10.0.0.7", "mayo": "mayo.example.org", "ki.se": "10.0.0.9"}


def p2pfl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pfl", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def rollout(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    # the script reads consortium.toml with python3's tomllib: put this (>= 3.11) python first
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    environ = {k: v for k, v in os.environ.items() if k not in ("SSH_USER", "REMOTE_DIR", "P2PFL_SOURCE")}
    return subprocess.run(
        ["bash", str(ROLLOUT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**environ, "PATH": path, **env},
    )


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("consortium")
    (root / "desc.toml").write_text(DESCRIPTION)
    done = p2pfl("consortium", "init", root / "desc.toml", "--out", root / "out")
    assert done.returncode == 0, done.stderr
    return root / "out"


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("p2pfl: error: ")
    return lines[0]


# --------------------------------------------------------------------------- CLI


def test_cli_init_then_check(out: Path) -> None:
    consortium = tomllib.loads((out / "consortium.toml").read_text())
    done = p2pfl("consortium", "check", out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok: 3 bundles" in done.stdout
    for member in consortium["members"]:
        assert member["name"] in done.stdout and member["fingerprint"] in done.stdout
    for name in HOSTS:  # never a secret key on the terminal
        secret = read_secret_key(out / name / "keys" / f"{name}.key_secret").secret
        assert secret not in done.stdout + done.stderr


def test_cli_init_prints_bundles_and_fingerprints_but_no_keys(tmp_path: Path) -> None:
    (tmp_path / "desc.toml").write_text(DESCRIPTION)
    done = p2pfl("consortium", "init", tmp_path / "desc.toml", "--out", tmp_path / "b")
    assert done.returncode == 0, done.stderr
    consortium = tomllib.loads((tmp_path / "b" / "consortium.toml").read_text())
    for member in consortium["members"]:
        assert member["fingerprint"] in done.stdout
        assert member["public_key"] not in done.stdout
        assert str(tmp_path / "b" / member["name"]) in done.stdout
    again = p2pfl("consortium", "init", tmp_path / "desc.toml", "--out", tmp_path / "b")
    assert again.returncode == 2 and "--force" in one_line_error(again)
    kept = p2pfl(
        "consortium", "init", tmp_path / "desc.toml", "--out", tmp_path / "b", "--force", "--keep-keys"
    )
    assert kept.returncode == 0, kept.stderr
    assert tomllib.loads((tmp_path / "b" / "consortium.toml").read_text()) == consortium


def test_cli_invalid_description_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "desc.toml").write_text(
        DESCRIPTION.replace('host = "10.0.0.9"\nport = 7003', 'host = "10.0.0.7"\nport = 7002')
    )
    done = p2pfl("consortium", "init", tmp_path / "desc.toml", "--out", tmp_path / "out")
    assert done.returncode == 2
    line = one_line_error(done)
    assert line.startswith("p2pfl: error: members[2].port: ") and "tcp://10.0.0.7:7002" in line
    assert not (tmp_path / "out").exists()


def test_cli_check_of_a_description_file(tmp_path: Path) -> None:
    (tmp_path / "desc.toml").write_text(DESCRIPTION)
    done = p2pfl("consortium", "check", tmp_path / "desc.toml")
    assert done.returncode == 0, done.stderr
    assert "3 members" in done.stdout and "tcp://mayo.example.org:7002" in done.stdout
    (tmp_path / "bad.toml").write_text(DESCRIPTION.replace("rounds = 5", "rounds = 0"))
    bad = p2pfl("consortium", "check", tmp_path / "bad.toml")
    assert bad.returncode == 2 and "training.rounds" in one_line_error(bad)


def test_cli_check_of_a_description_whose_nodes_would_refuse_secure_aggregation(tmp_path: Path) -> None:
    (tmp_path / "desc.toml").write_text(DESCRIPTION.replace("rounds = 5", "rounds = 5\nsecure_aggregation = true"))
    done = p2pfl("consortium", "check", tmp_path / "desc.toml")  # a ring of 3: two neighbours each
    assert done.returncode == 2
    line = one_line_error(done)
    assert line.startswith("p2pfl: error: training.secure_aggregation: secure aggregation needs at least 3")
    assert "charite, mayo, ki.se" in line


def test_the_walk_through_bundles_are_never_committed() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("bundles/charite/keys/charite.key_secret", "bundles/charite/node.toml"):
        done = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO, timeout=TIMEOUT)
        assert done.returncode == 0, f"{path} is not ignored: the README's bundles hold secret keys"


def test_cli_check_lists_problems_and_exits_1(out: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "mayo" / "keys" / "mayo.key_secret").chmod(0o644)
    done = p2pfl("consortium", "check", copy)
    assert done.returncode == 1
    assert any(line.startswith("problem: mayo: ") and "0644" in line for line in done.stdout.splitlines())
    missing = p2pfl("consortium", "check", tmp_path / "nowhere")
    assert missing.returncode == 2 and "does not exist" in one_line_error(missing)


# --------------------------------------------------------------------------- rollout.sh


def test_rollout_dry_run_status_prints_one_ssh_command_per_member(out: Path) -> None:
    done = rollout(out, "status", "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3
    for line, (name, host) in zip(lines, HOSTS.items(), strict=True):
        assert line.startswith("ssh ") and f" {host} " in line
        assert f"p2pfl-node@{name}.service" in line


def test_rollout_dry_run_honours_ssh_user_and_member_selection(out: Path) -> None:
    done = rollout(out, "start", "mayo", "--dry-run", SSH_USER="ops")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [
        "ssh -o BatchMode=yes ops@mayo.example.org 'sudo systemctl enable --now p2pfl-node@mayo.service'"
    ]
    unknown = rollout(out, "start", "nobody", "--dry-run")
    assert unknown.returncode == 2 and "nobody" in unknown.stderr


def test_rollout_copy_sends_each_member_only_its_own_bundle(out: Path) -> None:
    done = rollout(out, "copy", "--dry-run", REMOTE_DIR="/srv/fl")
    assert done.returncode == 0, done.stderr
    syncs = [line for line in done.stdout.splitlines() if line.startswith("rsync ")]
    assert len(syncs) == 3
    for line, (name, host) in zip(syncs, HOSTS.items(), strict=True):
        assert f"{out}/{name}/ {host}:/srv/fl/bundles/{name}/" in line
        assert "--exclude=/state/" in line  # never clobber a running node's checkpoints


def test_rollout_install_puts_torch_first(out: Path, tmp_path: Path) -> None:
    missing = rollout(out, "install", "--dry-run")
    assert missing.returncode == 2 and "P2PFL_SOURCE" in missing.stderr
    wheel = tmp_path / "p2pfl_gossip-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    done = rollout(out, "install", "charite", "--dry-run", P2PFL_SOURCE=str(wheel))
    assert done.returncode == 0, done.stderr
    text = done.stdout
    torch = text.index("torch==2.13.0")
    assert "download.pytorch.org/whl/cpu" in text[: torch + 20]
    assert text.index(f"/opt/p2pfl/dist/{wheel.name}", torch) > torch
    assert "/etc/systemd/system/p2pfl-node@.service" in text


def test_rollout_refuses_bad_arguments(out: Path) -> None:
    assert rollout(out, "explode", "--dry-run").returncode == 2
    assert rollout(out).returncode == 2
    assert rollout(out, "status", "--dry-run", REMOTE_DIR="relative/dir").returncode == 2


# --------------------------------------------------------------------------- unit, compose, Dockerfile


def test_systemd_unit_runs_the_bundle_hardened() -> None:
    unit = (DEPLOY / "p2pfl-node@.service").read_text()
    lines = set(unit.splitlines())
    assert "ExecStart=/opt/p2pfl/venv/bin/p2pfl node --config /opt/p2pfl/bundles/%i/node.toml" in lines
    for option in (
        "Restart=on-failure",
        "User=p2pfl",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/opt/p2pfl/bundles/%i/state",
    ):
        assert option in lines


def test_compose_and_dockerfile_install_cpu_torch_first_and_mount_bundles_read_only() -> None:
    docker = (DEPLOY / "Dockerfile").read_text()
    assert docker.index("torch==${TORCH_VERSION}") < docker.index("pip install .")
    assert "ARG TORCH_VERSION=2.13.0" in docker and "whl/cpu" in docker
    compose = (DEPLOY / "docker-compose.yml").read_text()
    for name in ("alice", "bob", "carol"):
        assert f"/{name}:/bundle:ro" in compose and f"{name}-state:/state" in compose


def test_rehearse_reports_members_that_failed_before_any_round(monkeypatch, tmp_path: Path, capsys) -> None:
    from p2pfl.cli.main import main
    from p2pfl.consortium import rehearsal

    def every_member_fails(description, out, **kwargs):
        summary = {"accuracy_by_member": {}, "nodes": 2, "rounds_completed": 0,
                   "wall_seconds": 1.0, "mean_accuracy": None}
        return rehearsal.RehearsalResult(Path(out), summary, {"a": 2, "b": 2})

    monkeypatch.setattr(rehearsal, "rehearse", every_member_fails)
    assert main(["consortium", "rehearse", str(tmp_path / "d.toml"), "--out", str(tmp_path / "r")]) == 1
    printed = capsys.readouterr().out
    assert "a                    accuracy none    exit 2" in printed
    assert "mean accuracy none" in printed and "failed: a, b" in printed
