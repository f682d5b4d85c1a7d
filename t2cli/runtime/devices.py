"""Which device a command runs on: ``--device auto|cpu|cuda|cuda:N``, the same on every command."""

from __future__ import annotations

import torch

from t2cli.errors import UsageError

DEVICES_HELP = "auto (CUDA when available), cpu, cuda or cuda:N"


def resolve_device(device: str) -> str:
    """``auto`` picks CUDA when available; anything else is passed through after a check.

    A device that does not exist here is a value error (``UsageError``, exit code 2).
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device} asked for, but no CUDA device is available", "use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"unknown device {device!r}", f"use {DEVICES_HELP}")
    return device
