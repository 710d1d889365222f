"""Any single stage as a Prefect flow, for running one stage's work under Prefect by hand:

    python -m flows.stages detect            # ephemeral Prefect, or PREFECT_API_URL's server

It calls the same ``nirgan stage <name>`` entry that dvc.yaml uses, in this process, on the
default paths. It does not update dvc.lock: the pipeline itself is ``dvc repro`` (plain CLI
stages, so no Prefect start-up per stage) and, under Prefect, the ``train-nir`` flow, which
gives every stage its own task run around ``dvc repro --single-item``.
"""

from __future__ import annotations

import sys

from prefect import flow

from flows.processes import in_process_prefect
from nirgan.cli import STAGES
from nirgan.cli import main as nirgan_main


@flow(name="nirgan-stage", flow_run_name="{name}", log_prints=True)
def stage(name: str, params: str = "params.yaml") -> None:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; one of {', '.join(STAGES)}")
    code = nirgan_main(["--params", params, "stage", name])
    if code != 0:
        raise RuntimeError(f"nirgan stage {name} exited with {code}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m flows.stages <{'|'.join(STAGES)}>")
    with in_process_prefect():
        stage(sys.argv[1])
