"""Dataset files already in the Hugging Face cache, found with huggingface_hub's own cache scanner.

Nothing is downloaded: a benchmark whose files are not in the cache raises one TaskError
saying which repository and files to put there (and the command that does it, to run on a
machine with network).
"""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

from t2cli.tasks.types import TaskError


def cache_dir() -> Path:
    """The HF hub cache huggingface_hub uses (``HF_HUB_CACHE``, else ``HF_HOME``/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants  # noqa: PLC0415 - heavy: huggingface_hub (~0.3 s), needed only by local VQA sets

    return Path(constants.HF_HUB_CACHE)


def cached_dataset_files(repo_id: str, patterns: dict[str, str], *, label: str) -> dict[str, list[Path]]:
    """For each name of ``patterns``, the cached files of dataset ``repo_id`` matching its glob, sorted.

    The snapshot ``refs/main`` points at is used, else the most recently modified one. TaskError
    when the dataset, or any pattern's files, are not in the cache.
    """
    from huggingface_hub import CacheNotFound, scan_cache_dir  # noqa: PLC0415 - heavy: huggingface_hub (~0.3 s), needed only by local VQA sets

    cache = cache_dir()
    include = " ".join(f"'{glob}'" for glob in patterns.values())
    hint = (
        f"put the dataset {repo_id} in the HF cache at {cache}: on a machine with network run "
        f"`hf download {repo_id} --repo-type dataset --include {include}` (HF_HUB_CACHE or HF_HOME chooses the folder)"
    )
    try:
        repos = scan_cache_dir(cache).repos
    except CacheNotFound:
        repos = frozenset()
    repo = next((r for r in repos if r.repo_type == "dataset" and r.repo_id == repo_id), None)
    if repo is None or not repo.revisions:
        raise TaskError(f"{label} is not in the HF cache ({cache} has no dataset {repo_id})", hint=hint)
    on_main = [rev for rev in repo.revisions if "main" in rev.refs]
    revision = on_main[0] if on_main else max(repo.revisions, key=lambda rev: rev.last_modified)
    found: dict[str, list[Path]] = {}
    for name, glob in patterns.items():
        files = sorted(
            f.file_path for f in revision.files if fnmatch(_relative(f.file_path, revision.snapshot_path), glob)
        )
        if not files:
            raise TaskError(
                f"{label}: the cached {repo_id} (snapshot {revision.commit_hash[:12]}) has no files matching '{glob}'",
                hint=hint,
            )
        found[name] = files
    return found


def _relative(path: Path, snapshot: Path) -> str:
    return path.relative_to(snapshot).as_posix()
