"""Names and links a user tells runs apart by (issue 24). Prefect's runs list shows each flow
run's name, and its own default is two random words. A flow run of train-nir, train-expression
or generate-nir is named after what it does: the DVC experiment (when the submission names one),
the overrides and the short git revision, e.g. ``steps-40: train.max_steps=40 @ 1a2b3c4`` or
``count=200 model=models:/nirgan-generator@champion @ 1a2b3c4``.

Prefect calls the ``*_flow_run_name`` functions in the flow-run process as the run starts, in the
worker's checkout (the deployment's pull step), with the run's parameters in
``prefect.runtime.flow_run.parameters``.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from urllib.parse import quote

from prefect.runtime import flow_run as runtime_flow_run
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_UI_URL

MAX_CONFIG_CHARS = 80


def describe(overrides: dict[str, Any] | None) -> str:
    """The overrides as ``dvc exp run -S`` takes them, ``key=value`` by a space; ``defaults`` if none."""
    if not overrides:
        return "defaults"
    text = " ".join(f"{key}={value if isinstance(value, str) else json.dumps(value)}"
                    for key, value in overrides.items())
    return text if len(text) <= MAX_CONFIG_CHARS else text[:MAX_CONFIG_CHARS - 1] + "…"


def short_revision(revision: str | None, checkout: Path | None = None) -> str:
    """``revision`` (default HEAD) of the checkout as 7 hex digits; as given if git cannot resolve it
    here (a branch the flow will fetch: the flow itself reports an unknown revision)."""
    wanted = revision or "HEAD"
    try:
        proc = subprocess.run(["git", "rev-parse", "--short=7", "--verify", "--quiet", f"{wanted}^{{commit}}"],
                              cwd=checkout or Path.cwd(), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return wanted
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else wanted


def experiment_run_name(parameters: dict[str, Any], checkout: Path | None = None) -> str:
    """train-nir / train-expression: ``[<experiment>: ]<overrides> @ <revision>``."""
    config = describe(parameters.get("overrides"))
    named = f"{parameters['experiment']}: {config}" if parameters.get("experiment") else config
    return f"{named} @ {short_revision(parameters.get('revision'), checkout)}"


def generate_run_name(parameters: dict[str, Any], checkout: Path | None = None) -> str:
    """generate-nir: ``[count=N ][model=REF ]<overrides> @ <revision>``."""
    parts = [f"{key}={parameters[key]}" for key in ("count", "model") if parameters.get(key) is not None]
    if parameters.get("overrides") or not parts:
        parts.append(describe(parameters.get("overrides")))
    return f"{' '.join(parts)} @ {short_revision(None, checkout)}"


def default_experiment(overrides: dict[str, Any] | None, run_id: str) -> str:
    """The DVC experiment's name when the submission gives none: the overrides as a git ref name
    allows, and the flow run's id, so two runs of the same overrides never collide."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", describe(overrides)).strip("-")[:48].rstrip("-")
    return f"{slug}-{re.sub(r'[^A-Za-z0-9]', '', run_id)[:8]}"


def experiment_flow_run_name() -> str:
    return experiment_run_name(dict(runtime_flow_run.parameters))


def generate_flow_run_name() -> str:
    return generate_run_name(dict(runtime_flow_run.parameters))


def flow_run_link(flow_run_id: str) -> str | None:
    """The flow run's page in the Prefect UI, through its login page when the server wants a
    password (the stack's does): a fresh browser that opens the page itself gets only
    "Authentication failed", while ``/login?redirect=<page>`` asks for the password and then
    opens the page. None without a UI (an ephemeral run)."""
    ui = PREFECT_UI_URL.value()
    if not ui or not flow_run_id:
        return None
    page = f"/runs/flow-run/{flow_run_id}"
    if not PREFECT_API_AUTH_STRING.value():
        return ui.rstrip("/") + page
    return f"{ui.rstrip('/')}/login?redirect={quote(page, safe='')}"
