"""`python flows/train_nir.py` in this process (ephemeral Prefect, no server or worker), with a
shared DVC remote and a git remote for experiments, as README's cluster table configures them.

What it proves: the flow pulls from and pushes to the DVC remote (outputs and run-cache), and
pushes the DVC experiment to ``NIRGAN_EXP_GIT_REMOTE``, so that another machine holding only the
two remotes can find the experiment and every output it cached.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from pipeline_project import make_project, project_env, run
from prefect_db import seed_prefect_home

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(900)
def test_local_train_nir_pushes_the_experiment_to_the_dvc_and_git_remotes(tmp_path, prefect_db):
    # No MLflow model (its export and registration are tested where they are the subject): the
    # remotes are.
    root = make_project(tmp_path / "project", {"train": {"log_model": False}})
    env = project_env(root)
    dvc_remote, git_remote = tmp_path / "dvc-remote", tmp_path / "experiments.git"
    run(["dvc", "remote", "add", "-d", "shared", str(dvc_remote)], root, env)
    run(["git", "commit", "-qam", "a shared DVC remote"], root, env)
    run(["git", "init", "-q", "--bare", str(git_remote)], tmp_path, env)
    env.update(NIRGAN_EXP_GIT_REMOTE=str(git_remote), PREFECT_HOME=str(tmp_path / "prefect-home"))
    seed_prefect_home(tmp_path / "prefect-home", prefect_db)
    env.pop("PREFECT_API_URL", None)  # ephemeral mode: the flow runs in this process

    out = run([sys.executable, "flows/train_nir.py", "-S", "train.seed=3", "-n", "remote-exp"], root, env)
    log = out.stdout + out.stderr
    assert "dvc pull --run-cache" in log and "dvc push --run-cache" in log, log[-3000:]

    # the experiment reached the git remote, with its params and lock
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], git_remote, env).stdout.split()
    ours = [r for r in refs if r.endswith("/remote-exp")]
    assert len(ours) == 1, refs
    params = yaml.safe_load(run(["git", "show", f"{ours[0]}:params.yaml"], git_remote, env).stdout)
    assert params["train"]["seed"] == 3
    lock = yaml.safe_load(run(["git", "show", f"{ours[0]}:dvc.lock"], git_remote, env).stdout)

    # every output the experiment cached is in the DVC remote (a directory's listing and its files);
    # the uncached ones are in the experiment's commit (metrics, plots) or local by design
    # (models/checkpoints: persist, for resume-on-retry)
    in_git = set(run(["git", "ls-tree", "-r", "--name-only", ours[0]], git_remote, env).stdout.split())
    cached = [o for stage in lock["stages"].values() for o in stage.get("outs", [])
              if o["path"] != "models/checkpoints"
              and not any(f == o["path"] or f.startswith(o["path"] + "/") for f in in_git)]
    assert {o["path"] for o in cached} >= {"data/raw", "data/prepared", "models/generator.pt", "models/samples"}
    store = dvc_remote / "files" / "md5"
    for out_ in cached:
        md5 = out_["md5"]
        obj = store / md5[:2] / md5[2:]
        assert obj.is_file(), f"{out_['path']} ({md5}) is not in the DVC remote"
        if md5.endswith(".dir"):
            for entry in json.loads(obj.read_text()):
                assert (store / entry["md5"][:2] / entry["md5"][2:]).is_file(), (out_["path"], entry["relpath"])
    # and the run-cache, so a stage another machine already ran is restored instead of rerun
    assert any((dvc_remote / "runs").rglob("*")), "no run-cache entries were pushed"

    # the checkout lists it too
    show = run(["dvc", "exp", "show", "--json"], root, env).stdout
    assert "remote-exp" in show


@pytest.mark.timeout(600)
def test_a_failed_run_says_why_in_one_line_in_its_final_state(tmp_path, prefect_db):
    # Issue 12 item 14: `prefect deployment run --watch` and the UI show the final state's
    # message; it must carry the cause (here check-params refusing a size the generator cannot
    # take), in one line, not a multi-line dump or only "Failed".
    root = make_project(tmp_path / "project")
    env = project_env(root)
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"))
    seed_prefect_home(tmp_path / "prefect-home", prefect_db)
    env.pop("PREFECT_API_URL", None)
    out = run([sys.executable, "flows/train_nir.py", "-S", "augment.image_size=100", "-n", "bad-size"], root, env,
              check=False)
    log = out.stdout + out.stderr
    assert out.returncode != 0
    final = [line for line in log.splitlines() if "Finished in state Failed(" in line]
    assert final, log[-3000:]
    message = final[-1].split("Finished in state Failed(", 1)[1]
    assert "RunFailed: prepare-workspace failed: " in message, message
    assert "nirgan: " in message and "augment.image_size" in message, message
    assert "\\n" not in message and "last lines" not in message, message


@pytest.mark.timeout(300)
def test_a_retry_or_a_resubmission_finds_the_failed_attempts_checkpoints(tmp_path):
    """Issue 24: Prefect's retry of a flow run deleted its failed workspace with the checkpoints,
    and a resubmission started train from step 0. Now a new workspace of the same run (same
    revision, pipeline and overrides) gets the newest checkpoints of a kept one; the trainer's
    fingerprint then decides whether they apply (tests/test_train.py)."""
    from flows import workspace

    root = make_project(tmp_path / "project")
    sha = run(["git", "rev-parse", "HEAD"], root).stdout.strip()
    logs: list[str] = []

    def create(run_id: str, overrides: dict) -> Path:
        runner = lambda cmd, cwd, env: run(cmd, cwd, env).stdout  # noqa: E731
        return Path(workspace.create(root, run_id, sha, overrides, runner, logs.append)["workspace"])

    overrides = {"train.max_steps": 5}
    first = create("run-a", overrides)
    ckpt = first / "models" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "step_00000002.pt").write_bytes(b"the state at step 2")
    (ckpt / "latest").write_text("step_00000002.pt\n")
    (ckpt / ".step_00000004.pt.tmp-1").write_bytes(b"torn")  # a killed writer's temporary
    assert not any("copied from" in line for line in logs)

    retried = create("run-a", overrides)  # Prefect's retry: the same flow run again
    kept = retried / "models" / "checkpoints"
    assert retried == first and (kept / "latest").read_text() == "step_00000002.pt\n"
    assert (kept / "step_00000002.pt").read_bytes() == b"the state at step 2"
    assert not (kept / ".step_00000004.pt.tmp-1").exists() and not first.with_name("run-a.previous").exists()
    assert any("copied from" in line for line in logs), logs

    resubmitted = create("run-b", overrides)  # a new flow run of the same run
    assert (resubmitted / "models" / "checkpoints" / "latest").read_text() == "step_00000002.pt\n"
    # the key file and the copied checkpoints are nothing git (and so the experiment) sees
    assert run(["git", "status", "--porcelain"], resubmitted).stdout.splitlines() == [" M params.yaml"]

    other = create("run-c", {"train.max_steps": 6})  # another run: starts afresh
    assert not (other / "models" / "checkpoints").exists()
