"""flows.names (issue 24): flow runs named after what they do, DVC experiment names that never
collide, and a flow-run link that leads a fresh browser through Prefect's login. A real git repo;
the end-to-end check (names and link of real flow runs on a real stack) is in tests/test_stack.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

from flows import names


@pytest.fixture
def checkout(tmp_path: Path) -> tuple[Path, str]:
    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True, text=True)  # noqa: E731
    run("init", "-q", "-b", "main")
    run("-c", "user.email=t@nirgan.local", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "one")
    return tmp_path, run("rev-parse", "HEAD").stdout.strip()


def test_train_runs_are_named_by_experiment_overrides_and_revision(checkout):
    root, head = checkout
    named = names.experiment_run_name({"overrides": {"train.max_steps": 40, "train.loss": "hinge"},
                                       "experiment": "steps-40", "revision": None}, root)
    assert named == f"steps-40: train.max_steps=40 train.loss=hinge @ {head[:7]}"
    assert names.experiment_run_name({"overrides": {}}, root) == f"defaults @ {head[:7]}"
    # a revision this checkout does not have (the flow fetches it, or says it is unknown) is shown as given
    assert names.experiment_run_name({"overrides": None, "revision": "feature/x"}, root) == "defaults @ feature/x"


def test_two_runs_of_different_configs_are_told_apart_and_long_ones_are_cut(checkout):
    root, _ = checkout
    a = names.experiment_run_name({"overrides": {"train.seed": 1}}, root)
    b = names.experiment_run_name({"overrides": {"train.seed": 2}}, root)
    assert a != b
    long = names.describe({f"train.key_{i}": i for i in range(30)})
    assert len(long) == names.MAX_CONFIG_CHARS and long.endswith("…")


def test_generate_runs_are_named_by_count_model_and_revision(checkout):
    root, head = checkout
    assert names.generate_run_name({"count": 200, "model": "models:/nirgan-generator@champion"}, root) == \
        f"count=200 model=models:/nirgan-generator@champion @ {head[:7]}"
    assert names.generate_run_name({"overrides": {"generate.seed": 3}}, root) == f"generate.seed=3 @ {head[:7]}"
    assert names.generate_run_name({}, root) == f"defaults @ {head[:7]}"


def test_default_experiment_names_are_git_refs_and_never_collide(checkout):
    root, _ = checkout
    overrides = {"train.max_steps": 40, "model.generator": "multinorm"}
    first = names.default_experiment(overrides, "0f1e2d3c-1111-2222-3333-444455556666")
    second = names.default_experiment(overrides, "9a8b7c6d-1111-2222-3333-444455556666")
    assert first != second and first.startswith("train-max_steps-40-model-generator-multinorm-")
    for name in (first, second, names.default_experiment(None, "local-1234")):
        ok = subprocess.run(["git", "check-ref-format", f"refs/exps/{name}"], cwd=root)
        assert ok.returncode == 0, name


def test_the_flow_run_link_goes_through_login_when_the_server_wants_a_password():
    run_id = "0f1e2d3c-1111-2222-3333-444455556666"
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4321/api", PREFECT_API_AUTH_STRING: "u:p"}):
        assert names.flow_run_link(run_id) == f"http://127.0.0.1:4321/login?redirect=%2Fruns%2Fflow-run%2F{run_id}"
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4321/api"}, restore_defaults={PREFECT_API_AUTH_STRING}):
        assert names.flow_run_link(run_id) == f"http://127.0.0.1:4321/runs/flow-run/{run_id}"
    with temporary_settings(restore_defaults={PREFECT_API_URL, PREFECT_UI_URL}):
        assert names.flow_run_link(run_id) is None
