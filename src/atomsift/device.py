"""Torch device names checked before any model is built."""

from __future__ import annotations

from atomsift.errors import ConfigError


def check_device(device):  # -> torch.device
    """The torch.device for `device`; ConfigError for a name torch rejects or a device this machine lacks."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown torch device '{device}' ({exc})", fix="use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(
            f"device '{device}' is not available here (torch {torch.__version__}, "
            f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} CUDA devices)",
            fix="use --device cpu, or install a CUDA build of torch on a machine with a GPU",
        )
    return dev
