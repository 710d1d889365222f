"""How long each phase of an evaluation took: logged as the phase ends, and kept as the
metrics ``evaluate_seconds_<phase>`` (wall seconds, not figures: they differ from run to run;
benchmarks/figures_vs_committed.py skips them). Shared by the NIR and the expression
evaluate stages."""

from __future__ import annotations

import logging
import time


class Laps:
    def __init__(self, log: logging.Logger, stage: str) -> None:
        self.log, self.stage = log, stage
        self.started = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def __call__(self, phase: str, what: str | None = None) -> None:
        """End ``phase`` now; ``what`` is its line in the log (else the phase's name)."""
        now = time.perf_counter()
        self.log.info("%s: %s (%.1f s)", self.stage, what or phase, now - self.last)
        self.seconds[f"evaluate_seconds_{phase}"] = round(now - self.last, 2)
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.started

    def metrics(self) -> dict[str, float]:
        """The phases' seconds so far, and ``evaluate_seconds_total`` since the start."""
        return {**self.seconds, "evaluate_seconds_total": round(self.total(), 2)}
