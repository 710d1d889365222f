"""`python flows/train_nir.py` in this process (ephemeral Prefect, no server or worker), with a
shared DVC remote and a git remote for experiments, as README's cluster table configures them.

What it proves: the flow pulls from and pushes to the DVC remote (outputs and run-cache), and
pushes the DVC experiment to ``NIRGAN_EXP_GIT_REMOTE``, so that another machine holding only the
two remotes can find the experiment and every output it cached.
"""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from pipeline_project import make_project, project_env, run

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(900)
def test_local_train_nir_pushes_the_experiment_to_the_dvc_and_git_remotes(tmp_path):
    root = make_project(tmp_path / "project")
    env = project_env(root)
    dvc_remote, git_remote = tmp_path / "dvc-remote", tmp_path / "experiments.git"
    run(["dvc", "remote", "add", "-d", "shared", str(dvc_remote)], root, env)
    run(["git", "commit", "-qam", "a shared DVC remote"], root, env)
    run(["git", "init", "-q", "--bare", str(git_remote)], tmp_path, env)
    env.update(NIRGAN_EXP_GIT_REMOTE=str(git_remote), PREFECT_HOME=str(tmp_path / "prefect-home"))
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
def test_a_failed_run_says_why_in_one_line_in_its_final_state(tmp_path):
    # Issue 12 item 14: `prefect deployment run --watch` and the UI show the final state's
    # message; it must carry the cause (here check-params refusing a size the generator cannot
    # take), in one line, not a multi-line dump or only "Failed".
    root = make_project(tmp_path / "project")
    env = project_env(root)
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"))
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
