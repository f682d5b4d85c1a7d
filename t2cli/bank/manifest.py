"""The starter bank's manifest (``bank.json``): what a bank folder ships, for which base model, how it was built.

A bank folder holds expert folders (the format ``t2 import`` reads), a router folder and
``bank.json``; every file is listed with its sha256, so a damaged install is refused
rather than registered. ``scripts/bank.sh`` rebuilds the embedded model's bank.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from t2cli.errors import T2Error
from t2cli.models.hashing import sha256_file

BANK_ROOT = Path(__file__).parent  # one sub-folder per base model
MANIFEST_FILE = "bank.json"
FORMAT = "t2-bank"
FORMAT_VERSION = 1


class BankError(T2Error):
    """A bank folder that cannot be installed (damaged, foreign or of a newer format)."""


@dataclass(frozen=True)
class Lift:
    """An expert against the base weights on the same held-out items (greedy)."""

    task: str
    split: str
    n: int
    base_correct: int
    expert_correct: int
    gains: int
    losses: int
    p: float  # exact two-sided McNemar
    max_new_tokens: int | None = None

    @property
    def base_accuracy(self) -> float:
        return self.base_correct / self.n

    @property
    def expert_accuracy(self) -> float:
        return self.expert_correct / self.n


@dataclass(frozen=True)
class BankExpert:
    name: str
    category: str
    task: str
    folder: str  # relative to the bank folder
    command: str  # the training command
    lift: Lift | None = None


@dataclass(frozen=True)
class BankRouter:
    name: str
    folder: str
    command: str
    valid_accuracy: float | None = None


@dataclass(frozen=True)
class Bank:
    """A bank folder, read and checked."""

    folder: Path
    model: str  # the alias or name the bank was built on
    fingerprint: str  # the base model's fingerprint: a bank installs only on that exact model
    t2_version: str
    built: str  # UTC date
    command: str  # the command that rebuilds the whole bank
    experts: tuple[BankExpert, ...]
    router: BankRouter | None
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("folder")
        return json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **data}, indent=2, sort_keys=True)


def read_bank(folder: Path) -> Bank:
    """The bank of ``folder``, every listed file checked against its sha256."""
    path = folder / MANIFEST_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BankError(
            f"cannot read the bank manifest {path}: {exc}", "reinstall t2 or rebuild: bash scripts/bank.sh"
        ) from None
    if data.get("format") != FORMAT:
        raise BankError(f"{path} is not a t2 bank manifest (format {data.get('format')!r})")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise BankError(
            f"{path} is bank format {data['format_version']}; this t2 reads up to {FORMAT_VERSION}", "upgrade t2"
        )
    try:
        experts = tuple(
            BankExpert(**{**e, "lift": Lift(**e["lift"]) if e.get("lift") else None}) for e in data["experts"]
        )
        router = BankRouter(**data["router"]) if data.get("router") else None
        bank = Bank(
            folder=folder,
            model=data["model"],
            fingerprint=data["fingerprint"],
            t2_version=data["t2_version"],
            built=data["built"],
            command=data["command"],
            experts=experts,
            router=router,
            files=dict(data["files"]),
        )
    except (KeyError, TypeError) as exc:
        raise BankError(f"{path} is missing or misnames a field: {exc}", "rebuild it: bash scripts/bank.sh") from None
    for relative, expected in bank.files.items():
        file = folder / relative
        if not file.is_file():
            raise BankError(f"the bank file {file} is missing", "reinstall t2 or rebuild: bash scripts/bank.sh")
        if sha256_file(file) != expected:
            raise BankError(f"the bank file {file} does not match its sha256 in {MANIFEST_FILE}", "reinstall t2")
    return bank


def shipped_banks(root: Path | None = None) -> list[Path]:
    """The bank folders shipped with t2 (each holds a ``bank.json``); ``root``: another folder of banks."""
    return sorted(p.parent for p in (root or BANK_ROOT).glob(f"*/{MANIFEST_FILE}"))


def bank_for(fingerprint: str, root: Path | None = None) -> Bank | None:
    """The shipped bank built on the base model with ``fingerprint``, if any (read and checked)."""
    for folder in shipped_banks(root):
        try:
            listed = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8")).get("fingerprint")
        except (OSError, ValueError):
            listed = None
        if listed == fingerprint:
            return read_bank(folder)
    return None
