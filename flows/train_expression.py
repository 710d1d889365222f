"""The ``train-expression`` flow (deployment ``train-expression/gpu``): the expression pipeline
(pipelines/expression/dvc.yaml, issue 13) as one DVC experiment, one Prefect task run per stage,
on the same work pool as train-nir. The steps are in flows/experiment.py; overrides are keys of
pipelines/expression/params.yaml.

    prefect deployment run train-expression/gpu --param 'overrides={"expression_train.model": "cgan"}'
    python -m flows.train_expression -S expression_train.steps=100 -n my-exp   # no server
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.experiment import Pipeline, main, run_pipeline
from flows.names import experiment_flow_run_name

EXPRESSION = Pipeline(flow="train-expression", folder="pipelines/expression", metrics="metrics/eval_expression.json",
                      artifact_key="train-expression-eval")


@flow(name="train-expression", log_prints=True, flow_run_name=experiment_flow_run_name)
def train_expression(overrides: dict[str, Any] | None = None, experiment: str | None = None,
                     revision: str | None = None) -> dict[str, Any]:
    """Reproduce the expression pipeline with ``overrides`` (dotted keys of its params.yaml) as
    the DVC experiment ``experiment`` on git ``revision`` (defaults as train-nir's)."""
    return run_pipeline(EXPRESSION, overrides, experiment, revision)


if __name__ == "__main__":
    main(train_expression, EXPRESSION.flow)
