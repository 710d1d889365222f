"""The ``train-nir`` flow (deployment ``train-nir/gpu``): the NIR pipeline (the root dvc.yaml)
as one DVC experiment, one Prefect task run per stage. The steps are in flows/experiment.py.

    prefect deployment run train-nir/gpu --param 'overrides={"train.seed": 3}'
    python -m flows.train_nir -S train.max_steps=20 -n my-exp      # in this process, no server
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.experiment import Pipeline, main, run_pipeline
from flows.names import experiment_flow_run_name

NIR = Pipeline(flow="train-nir", folder=".", metrics="metrics/eval.json", artifact_key="train-nir-eval")


@flow(name="train-nir", log_prints=True, flow_run_name=experiment_flow_run_name)
def train_nir(overrides: dict[str, Any] | None = None, experiment: str | None = None,
              revision: str | None = None) -> dict[str, Any]:
    """Reproduce the NIR pipeline with ``overrides`` (dotted params keys, as ``dvc exp run -S``)
    as the DVC experiment ``experiment`` (default: its overrides and the flow run's id) on git
    ``revision`` (default: the worker checkout's HEAD)."""
    return run_pipeline(NIR, overrides, experiment, revision)


if __name__ == "__main__":
    main(train_nir, NIR.flow)
