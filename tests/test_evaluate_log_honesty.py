"""No log line of evaluate claims work that did not run (issue 23): on a split without pose/gaze
labels, utility (TSTR) does not run and no pose estimator is trained, and the log says so."""

import logging

import numpy as np
import pandas as pd
import pytest
from test_evaluate import _fixture, _run

from nirgan.labels import LABELS


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("one_torch_thread")
def test_unlabelled_evaluate_logs_what_did_not_run(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    dirs = _fixture(tmp_path, with_mlflow=False)
    for part in ("train", "test"):  # a real folder of faces: no labels table
        table = pd.read_parquet(dirs["split"] / f"{part}.parquet")
        table[list(LABELS)] = np.nan
        table.to_parquet(dirs["split"] / f"{part}.parquet")
    caplog.set_level(logging.INFO, logger="nirgan")
    _, metrics = _run(tmp_path, dirs)

    assert metrics["utility_reason"].startswith("pose/gaze labels are missing")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluate: ")]
    assert any(line.startswith("evaluate: utility (TSTR) not run: pose/gaze labels are missing") for line in lines), lines
    assert not any("seeds (" in line and "utility" in line for line in lines), lines
    assert not any("pose estimator trained" in line for line in lines), lines
    assert any(line.startswith("evaluate: feature network trained (no pose/gaze labels)") for line in lines), lines
