"""Stand-ins for run_job in the parallel launcher's tests (importable by its spawned workers)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass


@dataclass
class FakeJob:
    name: str


def fake_job(job: FakeJob, resume: bool, overwrite: bool, log: object) -> dict[str, str]:
    """One job whose worker dies (as killed for memory); the others finish."""
    time.sleep(0.3)
    if job.name == "j1":
        os.kill(os.getpid(), signal.SIGKILL)
    return {f"cells/{job.name}": "ok"}
