"""Write a starter bank folder from a registry: ``python -m t2cli.bank.build`` (the last step of scripts/bank.sh).

Exports the named experts (the folder format ``t2 import`` reads) and the router, computes
each expert's held-out lift from the paired ``t2 eval --json`` files bank.sh wrote, and
writes ``bank.json`` (files with their sha256, base-model fingerprint, t2 version, the
commands that rebuild each piece) and a README model card. The new folder replaces the old
one only once it is complete.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from registry.queries import base_models
from registry.queries import experts as expert_rows
from registry.queries import routers as router_rows
from t2cli import __version__
from t2cli.bank.manifest import BANK_ROOT, MANIFEST_FILE, Bank, BankError, BankExpert, BankRouter, Lift, read_bank
from t2cli.errors import T2Error
from t2cli.eval.paired import paired
from t2cli.experts.export import export_expert
from t2cli.home import open_registry
from t2cli.models.hashing import sha256_file
from t2cli.models.resolve import DEFAULT_MODEL
from t2cli.router.store import load_router
from t2cli.svf.expert import WEIGHTS_FILE as EXPERT_WEIGHTS_FILE
from t2cli.train.loop import TrainConfig

DEFAULT_EXPERTS = ("bank-addition", "bank-types", "bank-possession")
DEFAULT_ROUTER = "bank-router"


def training_command(name: str, training: dict[str, Any]) -> str:
    """The ``t2 train`` command of an expert: its task and name plus every setting that differs from the default."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    words = ["t2", "train", "--task", str(training.get("task")), "--name", name]
    for key in ("steps", "max_new_tokens", "eval_every", "prompts_per_step", "samples_per_prompt", "lr", "seed"):
        if key in training and training[key] != defaults.get(key):
            words += [f"--{key.replace('_', '-')}", str(training[key])]
    return shlex.join(words)


def read_eval(path: Path) -> dict[str, Any]:
    """A ``t2 eval --json`` result."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise T2Error(f"cannot read the evaluation {path}: {exc}", "re-run scripts/bank.sh") from None


def lift_of(evals: Path, task: str, expert: str) -> Lift | None:
    """The expert against the base weights on the same items, from ``TASK-base.json`` and ``TASK-EXPERT.json``."""
    base_path, expert_path = evals / f"{task}-base.json", evals / f"{task}-{expert}.json"
    if not (base_path.exists() and expert_path.exists()):
        return None
    base, tuned = read_eval(base_path), read_eval(expert_path)
    base_items = {item["id"]: bool(item["correct"]) for item in base["samples"]}
    ids = [item["id"] for item in tuned["samples"]]
    if set(ids) != set(base_items):
        raise T2Error(f"{base_path.name} and {expert_path.name} scored different items", "re-run both evaluations")
    tuned_ok = [bool(item["correct"]) for item in tuned["samples"]]
    base_ok = [base_items[i] for i in ids]
    stats = paired(tuned_ok, base_ok)
    return Lift(
        task=task,
        split=str(tuned.get("split", "test")),
        n=stats.n,
        base_correct=sum(base_ok),
        expert_correct=sum(tuned_ok),
        gains=stats.gains,
        losses=stats.losses,
        p=stats.p,
        max_new_tokens=tuned.get("max_new_tokens"),
    )


def previous_bank(folder: Path) -> Bank | None:
    """The bank a build is about to replace, if it is there and intact (its lifts may carry over)."""
    if not (folder / MANIFEST_FILE).is_file():
        return None
    try:
        return read_bank(folder)
    except BankError:
        return None


def kept_lift(previous: Bank | None, expert_folder: str, name: str, weights_sha256: str) -> Lift | None:
    """The lift the replaced bank measured for this very expert file (same name, same sha256), if any.

    Rebuilding a bank for a new router must not need its experts' evaluations again: an
    expert whose weights did not change keeps the lift measured on them, and its folder.
    """
    if previous is None or previous.files.get(f"{expert_folder}/{EXPERT_WEIGHTS_FILE}") != weights_sha256:
        return None
    return next((e.lift for e in previous.experts if e.name == name), None)


def model_card(bank: Bank) -> str:
    """The bank's README: what each piece is, its held-out lift, and how to rebuild it."""
    lines = [
        f"# t2 starter bank for {bank.model}",
        "",
        f"Built with t2 {bank.t2_version} on {bank.built}; base model fingerprint `{bank.fingerprint}`.",
        f"Rebuild everything: `{bank.command}`. `t2 ask` installs this bank into a registry on first use;",
        "`t2 bank install` does it on demand, `t2 bank list` shows it.",
        "",
        "| expert | category | trained on | held-out test items | base | expert | gains / losses | McNemar p |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for e in bank.experts:
        if e.lift is None:
            lines.append(f"| `{e.name}` | {e.category} | `{e.task}` | not measured | | | | |")
            continue
        lift = e.lift
        lines.append(
            f"| `{e.name}` | {e.category} | `{e.task}` | {lift.n} | {lift.base_accuracy:.1%} | "
            f"**{lift.expert_accuracy:.1%}** | {lift.gains} / {lift.losses} | {lift.p:.2g} |"
        )
    lines += ["", "Greedy decoding; the embedded model is the Q4_1 GGUF dequantised to float32.", "", "## Commands", ""]
    lines += [f"- `{e.name}`: `{e.command}`" for e in bank.experts]
    if bank.router is not None:
        accuracy = (
            "" if bank.router.valid_accuracy is None else f" (validation accuracy {bank.router.valid_accuracy:.1%})"
        )
        lines.append(f"- `{bank.router.name}`{accuracy}: `{bank.router.command}`")
    return "\n".join(lines) + "\n"


def build_bank(
    experts: list[str], router: str | None, evals: Path, command: str, out: Path, model: str = DEFAULT_MODEL
) -> Bank:
    """Export ``experts`` and ``router`` of the current registry into the bank folder ``out`` (replaced when done)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = previous_bank(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        with open_registry(read_only=True) as registry:
            records = []
            for name in experts:
                record = expert_rows.get(registry, name)
                if record is None:
                    raise T2Error(f"no expert named {name!r} in {registry.home}", "run scripts/bank.sh")
                records.append(record)
            bases = [base_models.by_id(registry, r.base_model_id) for r in records]
            fingerprints = {base.fingerprint for base in bases if base is not None}
            if len(fingerprints) != 1:
                raise T2Error("the bank's experts belong to different base models", "use experts of one model")
            entries = []
            for record in records:
                folder = f"experts/{record.name}"
                export_expert(registry, record.name, tmp / folder)
                config = json.loads(record.config_json)
                task = str(record.task)
                weights_sha256 = sha256_file(tmp / folder / EXPERT_WEIGHTS_FILE)
                kept = kept_lift(previous, folder, record.name, weights_sha256)
                if previous is not None and kept is not None:
                    # the same expert file as shipped: keep its folder as it was (a registry that installed
                    # the bank re-exports it as "imported", with the bank as its origin)
                    shutil.rmtree(tmp / folder)
                    shutil.copytree(previous.folder / folder, tmp / folder)
                lift = lift_of(evals, task, record.name) or kept
                entries.append(
                    BankExpert(
                        name=record.name,
                        category=str(record.category),
                        task=task,
                        folder=folder,
                        command=training_command(record.name, {"task": task, **config.get("training", {})}),
                        lift=lift,
                    )
                )
            bank_router = None
            if router is not None:
                router_record = router_rows.get(registry, router)
                if router_record is None:
                    raise T2Error(f"no router named {router!r} in {registry.home}", "run scripts/bank.sh")
                loaded = load_router(registry, router_record)
                loaded.save(tmp / "routers" / router)
                bank_router = BankRouter(
                    name=router,
                    folder=f"routers/{router}",
                    command=loaded.config.command or f"t2 router train --experts {','.join(experts)} --name {router}",
                    valid_accuracy=loaded.config.valid_accuracy,
                )
        files = {str(path.relative_to(tmp)): sha256_file(path) for path in sorted(tmp.rglob("*")) if path.is_file()}
        bank = Bank(
            folder=out,
            model=model,
            fingerprint=fingerprints.pop(),
            t2_version=__version__,
            built=datetime.now(timezone.utc).date().isoformat(),
            command=command,
            experts=tuple(entries),
            router=bank_router,
            files=files,
        )
        (tmp / "README.md").write_text(model_card(bank), encoding="utf-8")
        (tmp / MANIFEST_FILE).write_text(bank.to_json() + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return bank


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", default=",".join(DEFAULT_EXPERTS), help="comma-separated expert names")
    parser.add_argument("--router", default=DEFAULT_ROUTER, help="router name ('' for none)")
    parser.add_argument(
        "--evals",
        type=Path,
        required=True,
        help="folder of the paired `t2 eval --json` files (an expert without them keeps the lift the replaced "
        "bank measured on the same file)",
    )
    parser.add_argument("--command", default="bash scripts/bank.sh", help="the command that rebuilds the bank")
    parser.add_argument("--out", type=Path, default=BANK_ROOT / DEFAULT_MODEL, help="the bank folder to write")
    args = parser.parse_args(argv)
    try:
        bank = build_bank(
            [n for n in args.experts.split(",") if n], args.router or None, args.evals, args.command, args.out
        )
    except T2Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(model_card(bank))
    return 0


if __name__ == "__main__":
    sys.exit(main())
