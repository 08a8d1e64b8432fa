"""What the benchmarks print about the machine they ran on."""

from __future__ import annotations

import datetime
import os
import platform


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    """``# date  CPU  cores  threads  torch version``: the first line of a benchmark's table."""
    import torch

    return (
        f"# {datetime.datetime.now().isoformat(timespec='minutes')}  {cpu_name()}  {os.cpu_count()} cores  "
        f"{torch.get_num_threads()} threads  torch {torch.__version__}"
    )
