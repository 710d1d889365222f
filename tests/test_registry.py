"""The model registry and the generate-nir deployment against real servers on 127.0.0.1.

One stack for the module (flows/stack.py, as `make stack` starts it: Prefect server, MLflow
server, one process worker) over a throwaway copy of the project; stopped by PID at the end.
A micro generator is trained once against the stack's MLflow server (the train stage itself,
train.log_model on); evaluate's logging (tracking.log_evaluation) then registers it, and the
checks follow in order: the model files in the run, @candidate after evaluate, `nirgan promote`
moving @champion, fetch_model by alias and by version returning the logged bytes, clear errors
for unknown references and an unreachable server, and `prefect deployment run generate-nir/gpu`
writing exactly `count` images from @champion and recording the dataset in MLflow.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pandas as pd
import pytest
import torch
from prefect_api import prefect_client
from train_helpers import SIZE, make_dataset, small_config

from nirgan import tracking
from nirgan.cli import main as cli_main
from nirgan.config import ConfigError, ServiceError
from nirgan.io import file_sha256
from nirgan.models.artifacts import save_pose_estimator
from nirgan.models.pose_estimator import PoseEstimator
from nirgan.stages import train as train_stage
from pipeline_project import running_stack

from flows import stack as stack_mod
from flows.stack_services import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("one_torch_thread")]
NAME = tracking.REGISTERED_MODEL
FLOW_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def stack(tmp_path_factory, prefect_db):
    with running_stack(tmp_path_factory.mktemp("registry"), prefect_db) as st, pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", st.mlflow_uri)
        mp.setenv("MLFLOW_TRACKING_TOKEN", st.mlflow_token())  # the stack's MLflow gate wants it
        yield st


@pytest.fixture(scope="module")
def trained(stack, tmp_path_factory):
    """A micro generator trained against the server, plus the label estimator evaluate would
    leave beside it; evaluate's logging run twice (an evaluate rerun), so there are two versions."""
    base = tmp_path_factory.mktemp("trained")
    prepared, split = make_dataset(base / "data")
    models = base / "models"
    cfg = small_config(log_model=True, max_steps=2, condition_on_labels=True)
    torch.manual_seed(0)
    train_stage.run(cfg, prepared, split, models, base / "metrics" / "train.json")
    save_pose_estimator(PoseEstimator(image_size=SIZE), models / tracking.LABEL_ESTIMATOR)  # as evaluate does
    run_id = json.loads((models / "mlflow_run.json").read_text())["run_id"]
    client = _client(stack)
    before = [v for v in client.search_model_versions(f"name='{NAME}'")]
    (base / "plots").mkdir()
    (base / "eval.json").write_text(json.dumps({"pose_gen_head_mean": 5.5}))
    metrics = {"pose_gen_head_mean": 5.5, "fid": "unavailable"}
    assert tracking.log_evaluation(models / "mlflow_run.json", metrics, base / "plots", base / "eval.json") == run_id
    first = tracking.alias_version(tracking.CANDIDATE)
    tracking.log_evaluation(models / "mlflow_run.json", metrics, base / "plots", base / "eval.json")
    return {"models": models, "run_id": run_id, "before": before, "first_candidate": first}


def _client(stack):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)


def test_train_and_evaluate_log_the_model_files_and_set_candidate(stack, trained):
    client = _client(stack)
    files = {f.path for f in client.list_artifacts(trained["run_id"], "files")}
    assert files == {"files/generator.pt", "files/encoder.pt", "files/label_estimator.pt"}
    tags = client.get_run(trained["run_id"]).data.tags
    for name in ("generator.pt", "encoder.pt", "label_estimator.pt"):
        assert tags[f"files.{name}.sha256"] == file_sha256(trained["models"] / name)
    # Nothing registered before evaluate; each evaluate registers a version and moves @candidate to it.
    assert trained["before"] == []
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{NAME}'"))
    assert versions == [1, 2]
    assert trained["first_candidate"] == "1"
    assert client.get_registered_model(NAME).aliases == {"candidate": "2"}


def test_promote_moves_champion(stack, trained, capsys):
    assert cli_main(["promote", "--version", "1"]) == 0
    assert capsys.readouterr().out.strip() == f"{NAME}@champion: none -> 1"
    assert cli_main(["promote"]) == 0  # default: @champion to @candidate's version
    assert capsys.readouterr().out.strip() == f"{NAME}@champion: 1 -> 2"
    assert cli_main(["promote"]) == 0
    assert capsys.readouterr().out.strip() == f"{NAME}@champion: 2 -> 2 (unchanged)"
    assert _client(stack).get_registered_model(NAME).aliases == {"candidate": "2", "champion": "2"}

    assert cli_main(["promote", "--from", "staging"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nirgan: promote --from staging: no alias 'staging'") and "\n" not in err, err
    assert cli_main(["promote", "--version", "9"]) == 2
    assert "no version 9" in capsys.readouterr().err
    assert _client(stack).get_registered_model(NAME).aliases == {"candidate": "2", "champion": "2"}


def test_fetch_model_by_alias_and_version_returns_the_logged_bytes(stack, trained, tmp_path):
    models = trained["models"]
    by_alias = tracking.fetch_model(f"models:/{NAME}@champion", tmp_path / "champion")
    by_version = tracking.fetch_model(f"models:/{NAME}/1", tmp_path / "v1")
    for got, version in ((by_alias, "2"), (by_version, "1")):
        assert got["name"] == NAME and got["version"] == version and got["run_id"] == trained["run_id"]
        assert got["generator"].read_bytes() == (models / "generator.pt").read_bytes()
        assert got["label_estimator"].read_bytes() == (models / "label_estimator.pt").read_bytes()
        assert got["metrics"] == {"pose_gen_head_mean": 5.5}
    assert sorted(p.name for p in (tmp_path / "champion").iterdir()) == ["generator.pt", "label_estimator.pt"]


@pytest.mark.parametrize("ref, says", [
    (f"models:/{NAME}@nope", "no alias 'nope'"),
    (f"models:/{NAME}/99", "no version 99"),
    ("models:/no-such-model@champion", "no registered model 'no-such-model'"),
    (f"models:{NAME}@champion", "is not a registry reference"),
])
def test_unknown_reference_is_a_config_error_naming_it(stack, trained, tmp_path, ref, says):
    with pytest.raises(ConfigError) as err:
        tracking.fetch_model(ref, tmp_path)
    message = str(err.value)
    assert message.startswith("generate.model: ") and says in message and "\n" not in message, message
    if "registry reference" not in says:
        assert ref in message, message
    if NAME in ref and "registry reference" not in says:  # the message lists what there is
        assert f"'{NAME}' has versions [1, 2], aliases @candidate -> 2, @champion -> 2" in message, message
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_is_a_service_error(stack, trained, tmp_path, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    t0 = time.monotonic()
    with pytest.raises(ServiceError) as err:
        tracking.fetch_model(f"models:/{NAME}@champion", tmp_path)
    assert time.monotonic() - t0 < 30
    assert str(err.value).startswith(f"MLflow tracking store {dead} is unreachable") and \
        "the model was not fetched" in str(err.value)


def test_generate_nir_deployment_writes_exactly_count_images(stack, trained, tmp_path):
    out = tmp_path / "dataset"
    overrides = {"generate.image_size": SIZE, "generate.shard_size": 2, "generate.out_dir": str(out),
                 "orchestrate.retry_delay_seconds": 1}
    cmd = [str(stack_mod.BIN / "prefect"), "deployment", "run", "generate-nir/gpu", "--param", "count=3",
           "--param", f"model=models:/{NAME}@champion", "--param", f"overrides={json.dumps(overrides)}"]
    proc = subprocess.run(cmd, cwd=stack.root, env=stack.env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    flow_run_id = re.search(r"flow-run/([0-9a-f-]{36})", proc.stdout).group(1)
    api = prefect_client(stack)
    for deployment in ("train-nir/gpu", "generate-nir/gpu"):  # prefect.yaml's two deployments named gpu
        assert api.get(f"/deployments/name/{deployment}").json()["work_pool_name"] == "gpu", deployment
    deadline = time.monotonic() + FLOW_TIMEOUT_S
    while (state := api.get(f"/flow_runs/{flow_run_id}").json()["state"])["type"] not in \
            {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
        assert time.monotonic() < deadline, f"generate-nir still {state['name']} after {FLOW_TIMEOUT_S} s"
        time.sleep(1.0)
    logs = "\n".join(p.read_text(errors="replace")[-4000:] for p in (stack.state / "logs").glob("worker-*.log"))
    assert state["type"] == "COMPLETED", f"{state}\n{logs}"

    # Exactly count images, one row each, from the champion version, in two shard task runs.
    labels = pd.read_parquet(out / "labels.parquet")
    images = sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png"))
    assert len(labels) == 3 and sorted(labels["file"]) == images and len(images) == 3
    assert set(labels["model_version"].astype(str)) == {"2"}
    card = json.loads((out / "dataset.json").read_text())
    assert card["model"]["version"] == "2" and card["model"]["run_id"] == trained["run_id"]
    tasks = api.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}}).json()
    shards = sorted(t["name"] for t in tasks if t["name"].startswith("shard-"))
    assert shards == ["shard-00000", "shard-00001"], sorted(t["name"] for t in tasks)
    assert all(t["state"]["type"] == "COMPLETED" for t in tasks)

    # The dataset in MLflow: a generate-... run with labels.parquet as its input and the card.
    client = _client(stack)
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`nirgan.kind` = 'generated-dataset'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    assert run.info.run_name == f"dataset {out.name} from {NAME} v2" and run.info.status == "FINISHED"
    assert run.data.tags["generator_version"] == "2" and run.data.tags["generator_run_id"] == trained["run_id"]
    (dataset_input,) = run.inputs.dataset_inputs
    assert json.loads(dataset_input.dataset.source) == {"uri": str(out.resolve())}
    assert json.loads(dataset_input.dataset.profile)["num_rows"] == 3
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "generated"
    assert "dataset/dataset.json" in {f.path for f in client.list_artifacts(run.info.run_id, "dataset")}


def test_a_download_that_does_not_match_its_logged_digest_is_refused(stack, trained, tmp_path):
    """The bytes in the server's artifact store changed under the run (last: it restores them)."""
    (stored,) = (stack.state / "mlflow" / "artifacts").rglob(f"{trained['run_id']}/artifacts/files/generator.pt")
    original = stored.read_bytes()
    try:
        stored.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(ServiceError, match="downloaded with sha256 .* logged as"):
            tracking.fetch_model(f"models:/{NAME}/1", tmp_path)
    finally:
        stored.write_bytes(original)
    assert not (tmp_path / "generator.pt").exists()
