"""A Prefect database already at the pinned Prefect's schema, for the tests whose subject is not
a fresh server's first start.

A Prefect server (or a flow's temporary server) on a new SQLite database first runs every
migration: on an idle 2-core machine a server took 13.2 s and 12.5 CPU seconds to answer on a new
database, and 5.2 s and 5.1 CPU seconds on a copy of one that ``prefect server database upgrade``
had migrated (benchmarks/prefect_first_start.py, medians of 4 interleaved rounds). That command
builds the copy once per test session (:func:`build`, run by conftest's ``prefect_db`` fixture);
a test puts it into its PREFECT_HOME before it starts anything (:func:`seed_prefect_home`).

The first start on a new machine stays tested where it is the subject: the stack of
tests/test_stack.py (``make stack`` on a fresh clone) and the temporary server of
tests/test_processes.py migrate databases of their own.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from flows.stack_services import run_command
from flows.stack_settings import BIN

DB = "prefect.db"


def build(folder: Path) -> None:
    """``folder/prefect.db``, migrated by Prefect's own command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(folder), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    run_command([str(BIN / "prefect"), "server", "database", "upgrade", "-y"], env, folder)
    assert (folder / DB).is_file(), f"prefect server database upgrade wrote no {folder / DB}"


def seed_prefect_home(prefect_home: Path, template: Path) -> None:
    """A PREFECT_HOME holding a copy of the migrated database (a server there writes to its own copy)."""
    prefect_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, prefect_home / DB)
