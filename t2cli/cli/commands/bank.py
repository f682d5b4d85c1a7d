"""``t2 bank``: the starter banks shipped with t2 (experts + router per base model), listed and installed."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import typer
from rich.table import Table

from t2cli.cli.console import err, out, print_json
from t2cli.cli.options import JsonOpt, ModelOpt

app = typer.Typer(
    help="Starter banks: experts and a router shipped with t2, so `t2 ask` self-adapts with no training first.",
    epilog="Examples:  t2 bank list  ·  t2 bank install",
    no_args_is_help=True,
)


@app.command("list")
def list_cmd(as_json: JsonOpt = False) -> None:
    """List the shipped banks: base model, experts with their held-out lifts, router.

    Examples:

      t2 bank list

      t2 bank list --json | jq '.banks[].experts[].lift'
    """
    from t2cli.bank.manifest import read_bank, shipped_banks  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help`

    banks = [read_bank(folder) for folder in shipped_banks()]
    if as_json:
        print_json({"banks": [_bank_json(bank) for bank in banks]})
        return
    if not banks:
        err.print("no starter bank ships with this t2 (rebuild one: bash scripts/bank.sh)", markup=False)
        return
    for bank in banks:
        table = Table(title=f"bank {bank.folder.name}: {bank.model}, t2 {bank.t2_version}, built {bank.built}")
        for column in ("expert", "category", "trained on", "held-out n", "base", "expert acc.", "gains/losses", "p"):
            table.add_column(column, justify="right" if column not in ("expert", "category", "trained on") else "left")
        for e in bank.experts:
            lift = e.lift
            numbers = (
                [str(lift.n), f"{lift.base_accuracy:.1%}", f"{lift.expert_accuracy:.1%}", f"{lift.gains}/{lift.losses}"]
                + [f"{lift.p:.2g}"]
                if lift
                else ["-"] * 5
            )
            table.add_row(e.name, e.category, e.task, *numbers)
        out.print(table)
        if bank.router is not None:
            accuracy = (
                "" if bank.router.valid_accuracy is None else f", validation accuracy {bank.router.valid_accuracy:.1%}"
            )
            out.print(f"router {bank.router.name}{accuracy}", markup=False)
        out.print(f"rebuild: {bank.command}", markup=False)


def _bank_json(bank: Any) -> dict[str, Any]:
    data = asdict(bank)
    data["folder"] = str(bank.folder)
    data.pop("files")
    return data


@app.command("install")
def install_cmd(model: ModelOpt = None, as_json: JsonOpt = False) -> None:
    """Register the model's shipped bank (experts + router) in the registry; what is already there is kept.

    `t2 ask` does this by itself on first use (and after an upgrade of t2 that ships a newer bank); run
    it to bring back a removed bank expert. The router an older bank installed is replaced by the new
    bank's; a router you trained under that name is kept.

    Examples:

      t2 bank install

      t2 bank install --json
    """
    from t2cli.ask.engine import prepare_model  # noqa: PLC0415 - CLI start-up: pulls torch and transformers (~4 s)
    from t2cli.bank.install import install_bank, read_marker, router_staleness  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.bank.manifest import bank_for  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help`
    from t2cli.errors import T2Error  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help`
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    with open_registry() as registry:
        prepared = prepare_model(registry, model, None)
        bank = bank_for(prepared.fingerprint)
        if bank is None:
            raise T2Error(
                f"no starter bank ships for {prepared.model_name}",
                "`t2 bank list` shows the shipped banks; train experts and a router with `t2 train` and `t2 router train`",
            )
        installed = install_bank(registry, bank, model=model, previous=read_marker(registry.home))
        stale = router_staleness(registry, installed)
    report: dict[str, Any] = {"bank": bank.folder.name, "experts": installed.experts, "router": installed.router}
    report |= {"router_replaced": installed.upgraded}
    report |= {"kept": installed.kept, "router_stale": stale}
    if as_json:
        print_json(report)
        return
    added = [*installed.experts, *([installed.router] if installed.router else [])]
    out.print(f"installed: {', '.join(added) if added else 'nothing new'}", markup=False)
    if installed.upgraded and bank.router is not None:
        out.print(f"replaced: router {bank.router.name} of the older bank", markup=False)
    for line in installed.kept:
        out.print(f"kept: {line}", markup=False)
    if stale:
        err.print(f"warning: router {bank.router.name if bank.router else ''} is stale here: {stale}", markup=False)
