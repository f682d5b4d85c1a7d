"""Share experts through the Hugging Face Hub: ``push_expert`` and ``pull_expert``.

Push writes the expert folder (docs/experts.md) to a temporary folder and uploads its
three files in one commit (``HfApi.create_commit``), creating the repo (and branch) if
needed. The token comes from where huggingface_hub keeps it (``HF_TOKEN``, ``hf auth
login``); t2 never prints or stores it.

Pull downloads only the expert files (``snapshot_download`` with ``allow_patterns``) into
the normal HF cache, honouring ``HF_HUB_OFFLINE``, then runs the same validation as
``t2 import`` (t2cli.experts.importing) before registering anything.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from t2cli.errors import T2Error
from t2cli.experts.importing import EXPERT_FILES, ImportResult, import_expert
from t2cli.svf.expert import WEIGHTS_FILE, load_expert, write_expert_folder

if TYPE_CHECKING:
    from registry import Registry

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]{1,96}$")


class HubError(T2Error):
    """The Hub refused a request or cannot be reached."""


@dataclass(frozen=True)
class PushResult:
    """The commit ``push_expert`` made."""

    expert: str
    repo_id: str
    branch: str
    commit: str
    commit_url: str
    files: list[str]


def check_repo_id(repo_id: str) -> str:
    """A model repo id is ``owner/name``."""
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise HubError(f"{repo_id!r} is not a Hub repo id", "use owner/name, e.g. alice/math-expert")
    return repo_id


def push_expert(
    registry: Registry,
    name: str,
    repo_id: str,
    *,
    private: bool = False,
    branch: str | None = None,
    message: str | None = None,
) -> PushResult:
    """Upload a registered expert's folder to ``repo_id`` in one commit; returns the commit."""
    check_repo_id(repo_id)
    loaded = load_expert(registry, name)
    if constants.HF_HUB_OFFLINE:
        raise HubError("cannot push while HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE and run again")
    token = get_token()
    if not token:
        raise HubError(
            "no Hugging Face token found",
            "log in with `hf auth login` or set HF_TOKEN to a token with write access",
        )
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="t2-push-") as tmp:
        folder = write_expert_folder(Path(tmp) / name, loaded.z, loaded.config)
        operations = [
            CommitOperationAdd(path_in_repo=file, path_or_fileobj=str(folder / file)) for file in EXPERT_FILES
        ]
        with hub_errors(repo_id, branch, writing=True):
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            if branch and branch != "main":
                api.create_branch(repo_id, branch=branch, repo_type="model", exist_ok=True)
            commit = api.create_commit(
                repo_id,
                operations,
                repo_type="model",
                revision=branch,
                commit_message=message or f"Upload t2 expert {name}",
                commit_description=f"Transformer-Squared SVF expert `{name}`: {', '.join(EXPERT_FILES)}.",
            )
    return PushResult(
        expert=name,
        repo_id=repo_id,
        branch=branch or "main",
        commit=commit.oid,
        commit_url=commit.commit_url,
        files=list(EXPERT_FILES),
    )


def pull_expert(
    registry: Registry,
    repo_id: str,
    *,
    revision: str | None = None,
    name: str | None = None,
    model: str | None = None,
) -> ImportResult:
    """Download an expert repo's files into the HF cache, validate them like `t2 import`, register."""
    check_repo_id(repo_id)
    with hub_errors(repo_id, revision, writing=False):
        snapshot = Path(
            snapshot_download(repo_id, repo_type="model", revision=revision, allow_patterns=list(EXPERT_FILES))
        )
    if not (snapshot / WEIGHTS_FILE).exists():
        raise HubError(
            f"Hub repo {repo_id} holds no t2 expert (no {WEIGHTS_FILE})",
            "t2 pull reads repos written by `t2 push`; check the repo id and --revision",
        )
    # A cache snapshot links each file to ../../blobs/<hash>; links anywhere else are refused.
    return import_expert(
        registry,
        snapshot,
        name=name,
        model=model,
        source="hub",
        location=repo_id,
        revision=snapshot.name,
        links_into=snapshot.resolve().parent.parent / "blobs",
    )


_TOKEN_SHAPE = re.compile(r"hf_[A-Za-z0-9]{8,}")


def _redacted(text: str) -> str:
    """``text`` with the Hugging Face token, and anything shaped like one, masked (for error messages)."""
    token = get_token()
    if token:
        text = text.replace(token, "***")
    return _TOKEN_SHAPE.sub("hf_***", text)


@contextmanager
def hub_errors(repo_id: str, revision: str | None, *, writing: bool) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one-line ``HubError``s (never echoing the token)."""
    try:
        yield
    except GatedRepoError:
        raise HubError(
            f"Hub repo {repo_id} is gated and this account has no access",
            "accept its terms on the Hub, then log in with `hf auth login`",
        ) from None
    except RevisionNotFoundError:
        raise HubError(f"Hub repo {repo_id} has no revision {revision!r}", "check --revision") from None
    except RepositoryNotFoundError:
        raise HubError(
            f"Hub repo {repo_id} not found (or private and your token cannot see it)",
            "check the id, or log in with `hf auth login`",
        ) from None
    except LocalEntryNotFoundError:
        where = f"{repo_id}" + (f" at revision {revision!r}" if revision else "")
        raise HubError(
            f"{where} is not in the HF cache and the Hub cannot be reached (offline)",
            "connect and unset HF_HUB_OFFLINE, or copy the HF cache from a machine that pulled it",
        ) from None
    except OfflineModeIsEnabled:
        raise HubError(
            "the Hub cannot be reached: HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE and run again"
        ) from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:
            raise HubError("the Hub rejected the token (401)", "log in again with `hf auth login`") from None
        if status == 403:
            action = "write to" if writing else "read"
            raise HubError(
                f"your token cannot {action} {repo_id} (403)",
                "use a token with write access to that namespace (`hf auth login`)",
            ) from None
        first = _redacted((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:200]
        raise HubError(f"the Hub refused the request for {repo_id}: {first}", "try again later") from None
    except Exception as exc:
        if type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3") or isinstance(
            exc, (ConnectionError, TimeoutError)
        ):
            raise HubError(
                f"cannot reach the Hub ({type(exc).__name__})",
                "check your connection (or set HF_ENDPOINT), then run again",
            ) from None
        raise
