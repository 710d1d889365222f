"""Stage contracts (issue 20 item 4): each stage reads exactly the params it declares.

Both pipelines run here, every stage for real at a tiny size and in this process, on a config
that notes every key read from it (tests/params_reads.py). Then, for each stage of dvc.yaml
and of pipelines/expression/dvc.yaml:

- every key it read is declared under ``params:`` (else a change to it would leave a stale output
  that ``dvc repro`` calls up to date);
- every declared key was read (else a change to it reruns the stage for nothing), except the few
  in CONDITIONAL, which the stage reads only under other settings;
- the stages that start an MLflow run (train, train_expression, generate) log their declared keys
  as its params, and no others.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from params_reads import recording_reads
from pipeline_project import EXPRESSION_MICRO_PARAMS, MICRO_PARAMS, deep_update

from nirgan import cli
from nirgan.config import parse_config
from nirgan.tracking.store import flatten

ROOT = Path(__file__).resolve().parents[1]

# Even smaller than the DVC tests' micro projects: only which keys are read matters here. The
# expression split keeps two test subjects, so that evaluate_expression reaches its identity net.
TINY = {
    "nir": deep_update(copy.deepcopy(MICRO_PARAMS), {
        "train": {"max_steps": 2, "checkpoint_every": 1},
        "evaluate": {"utility_seeds": 1, "judge_seeds": 1, "judge_epochs": 1},
        "generate": {"count": 4, "shard_size": 2}}),
    "expression": deep_update(copy.deepcopy(EXPRESSION_MICRO_PARAMS), {
        "collect": {"expression_twin": {"subjects": 5}}, "split": {"test_fraction": 0.4},
        "expression_train": {"steps": 2}}),
}
PIPELINES = {"nir": ROOT, "expression": ROOT / "pipelines" / "expression"}

_OTHER_SOURCES = ("collect.path", "collect.labels", "collect.label_map", "collect.video_frame_step",
                  "collect.max_pixels", "collect.max_side", "collect.bit_depth")
_WHOLE_COLLECT = ("collect is declared whole: a params file for own data replaces the section (README), so only "
                  "collect.source is always there for DVC to find, and collect.source picks which keys are read")
# Declared keys a stage does not read in this test's run, and why it declares them: it reads them
# under other settings, or they share a section declared whole because DVC must find every declared
# key in every params file. The test fails when a stage reads a key excused here.
CONDITIONAL: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {
    ("nir", "collect"): ((*_OTHER_SOURCES, "collect.expression_twin"), _WHOLE_COLLECT),
    ("expression", "collect_expression"): ((*_OTHER_SOURCES, "collect.twin"), _WHOLE_COLLECT),
    ("nir", "detect"): (("detect.min_side", "detect.pre_cropped"),
                        "the detect section is declared whole; detect_expression reads these (face crops that "
                        "need no detection, small images)"),
    ("expression", "clean_expression"): (("clean.misalignment", "clean.misalignment_k", "clean.misalignment_floor"),
                                         "the clean section is declared whole; NIR clean reads these (a rig "
                                         "render's alignment with its NIR frame)"),
    ("nir", "baselines"): (("train.lambda_ir",),
                           "whether the latent encoder E is built (and so which random draws the generator's "
                           "initial weights take) reads lambda_ir only when lambda_lr is 0"),
    ("nir", "evaluate"): (("evaluate.lpips_version",),
                          "read where the LPIPS backbone weights are on disk; TORCH_HOME is empty here"),
    ("nir", "generate"): ((*_OTHER_SOURCES, "collect.expression_twin"),
                          _WHOLE_COLLECT + " (generate reads collect.source and collect.twin; "
                          "tests/test_hardening_round3_cli.py); a change to the others reruns collect, and so "
                          "generate, anyway"),
}


def declared(pipeline: str) -> dict[str, list[str]]:
    stages = yaml.safe_load((PIPELINES[pipeline] / "dvc.yaml").read_text())["stages"]
    return {name: list(stage.get("params") or []) for name, stage in stages.items()}


LEAVES = set(flatten(parse_config({}).model_dump()))


def expand(entries: list[str]) -> set[str]:
    """The leaf keys a dvc.yaml params list covers ("train" covers every train.* key)."""
    out = set()
    for entry in entries:
        covered = {k for k in LEAVES if k == entry or k.startswith(entry + ".")}
        assert covered, f"{entry}: not a key of the typed config"
        out |= covered
    return out


def _run_pipeline(pipeline: str, root: Path) -> dict[str, set[str]]:
    params = yaml.safe_load((PIPELINES[pipeline] / "params.yaml").read_text())
    base = parse_config(deep_update(params, TINY[pipeline]))
    reads = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("NIRGAN_CPUS", "1")  # every stage in this process, so that every read is noted
        mp.setenv("TORCH_HOME", str(root / "no-weights"))  # the same reads with or without cached weights
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for stage in declared(pipeline):
                cfg, reads[stage] = recording_reads(base)
                cli.STAGES[stage](cfg, Path("params.yaml"))
        finally:
            torch.set_num_threads(before)
    return reads


@pytest.fixture(scope="module")
def runs(store, tmp_path_factory) -> dict[str, tuple[Path, dict[str, set[str]]]]:
    """Each pipeline's project folder and the keys each of its stages read."""
    out = {}
    for pipeline in PIPELINES:
        root = tmp_path_factory.mktemp(pipeline)
        out[pipeline] = root, _run_pipeline(pipeline, root)
    return out


STAGES = [(p, s) for p in PIPELINES for s in declared(p)]


@pytest.mark.e2e
@pytest.mark.parametrize(("pipeline", "stage"), STAGES)
def test_every_key_a_stage_reads_is_declared(runs, pipeline, stage):
    read = runs[pipeline][1][stage]
    assert read, f"{pipeline} {stage}: no params read noted (the recorder is broken)"
    undeclared = sorted(read - expand(declared(pipeline)[stage]))
    assert not undeclared, (f"{PIPELINES[pipeline].relative_to(ROOT) / 'dvc.yaml'} stage {stage} reads params it "
                            f"does not declare (a change there would leave stale outputs): {undeclared}")


@pytest.mark.e2e
@pytest.mark.parametrize(("pipeline", "stage"), STAGES)
def test_every_key_a_stage_declares_is_read(runs, pipeline, stage):
    read = runs[pipeline][1][stage]
    excused = expand(list(CONDITIONAL.get((pipeline, stage), ((), ""))[0]))
    stale = sorted(excused & read) + sorted(excused - expand(declared(pipeline)[stage]))
    assert not stale, f"CONDITIONAL[{pipeline}, {stage}] excuses keys the stage reads or does not declare: {stale}"
    unread = expand(declared(pipeline)[stage]) - read - excused
    assert not unread, (f"{PIPELINES[pipeline].relative_to(ROOT) / 'dvc.yaml'} stage {stage} declares params it "
                        f"never reads (a change reruns it for nothing; declare the keys it reads): {sorted(unread)}")


@pytest.mark.e2e
@pytest.mark.parametrize(("pipeline", "stage"), [("nir", "train"), ("expression", "train_expression"),
                                                 ("nir", "generate")])
def test_mlflow_logs_the_stages_own_params(runs, store, pipeline, stage):
    """The runs a stage starts (evaluate logs into the training run, whose params MLflow never
    lets change, so it logs none)."""
    from mlflow.tracking import MlflowClient

    from nirgan.tracking import read_run_info

    root, client = runs[pipeline][0], MlflowClient(store)
    if stage == "generate":
        found = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                   f"tags.dataset_dir = '{(root / 'data' / 'generated').resolve()}'")
        assert len(found) == 1, found
        logged = set(found[0].data.params)
    else:
        info = read_run_info(root / "models" / "mlflow_run.json")
        logged = set(client.get_run(info["run_id"]).data.params)
    # the expression trainer adds the paper values its None settings resolved to
    logged = {k for k in logged if not k.startswith("resolved.")}
    assert logged == expand(declared(pipeline)[stage]), sorted(logged ^ expand(declared(pipeline)[stage]))


def test_the_recorder_notes_properties_methods_and_dumps():
    """The instrument itself: reads through a property, a method and a whole-section dump count,
    reading a sub-section alone does not, and the copy behaves as the config."""
    plain = parse_config({})
    cfg, read = recording_reads(plain)
    assert cfg.train.epochs == plain.train.epochs and read == {"train.epochs_fixed", "train.epochs_decay"}
    read.clear()
    cfg.augment.scale  # noqa: B018
    assert read == set()
    cfg.expression_train.resolved()
    assert "expression_train.model" in read and "expression_train.lr_g" in read
    read.clear()
    cfg.detect.model_dump(exclude={"device"})
    assert read == {f"detect.{k}" for k in type(cfg.detect).model_fields} - {"detect.device"}
    assert cfg.model_copy(update={"task": "nir"}).train.lambda_lr == plain.train.lambda_lr
    assert "train.lambda_lr" in read
