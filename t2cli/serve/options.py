"""Checks of ``t2 serve``'s options made before anything is loaded: where it may listen, sizes."""

from __future__ import annotations

import ipaddress
import re

from t2cli.errors import UsageError

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3}
_UNITS.update({"kib": 1024, "mib": 1024**2, "gib": 1024**3, "tb": 1000**4, "tib": 1024**4})


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to listen beyond this machine without a key (or an explicit --insecure)."""
    if is_loopback(host) or api_key or insecure:
        return
    raise UsageError(
        f"refusing to listen on {host} without --api-key: anyone who can reach this machine could use the model",
        "pass --api-key KEY (or set T2_API_KEY), or --insecure on a network you trust",
    )


def parse_size(text: str, option: str = "--cache-memory") -> int:
    """``"2GiB"``, ``"500MB"``, ``"0"`` -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise UsageError(f"{option} {text!r} is not a size", "e.g. 2GiB, 500MB or 0 (no cache)")
    return int(float(match.group(1)) * _UNITS[unit])


BATCHING = ("continuous", "static")


def check_batching(batching: str) -> None:
    """Refuse an unknown --batching before the model is loaded."""
    if batching not in BATCHING:
        raise UsageError(f"unknown --batching {batching!r}", f"use one of: {', '.join(BATCHING)}")
