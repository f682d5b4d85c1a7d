"""Tasks by name: ``@register_task`` on a ``Task`` subclass, ``get_task`` and ``list_tasks`` to find them."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from t2cli.tasks.base import Task, TaskError
from t2cli.tasks.custom import load_task_file

_TASKS: dict[str, type[Task]] = {}
_ALIASES: dict[str, str] = {}
_INSTANCES: dict[str, Task] = {}


def register_task(
    name: str, *, aliases: tuple[str, ...] = (), category: str = "", description: str = ""
) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: make a ``Task`` subclass available as ``name`` (and its aliases, case-insensitive)."""

    def register(cls: type[Task]) -> type[Task]:
        key = name.lower()
        for taken in (key, *(a.lower() for a in aliases)):
            if taken in _TASKS or taken in _ALIASES:
                raise ValueError(f"task name '{taken}' is already registered")
        cls.name, cls.aliases, cls.category = key, tuple(a.lower() for a in aliases), category or cls.category
        cls.description = description or cls.description
        _TASKS[key] = cls
        for alias in cls.aliases:
            _ALIASES[alias] = key
        return cls

    return register


def task_names() -> list[str]:
    """Registered task names and aliases, sorted."""
    return sorted([*_TASKS, *_ALIASES])


def get_task(name_or_path: str) -> Task:
    """The task called ``name_or_path`` (name or alias, any case), or one read from a ``.jsonl`` file.

    Named tasks are created once and shared, so their splits are loaded once.
    """
    key = name_or_path.strip().lower()
    key = _ALIASES.get(key, key)
    if key in _TASKS:
        if key not in _INSTANCES:
            _INSTANCES[key] = _TASKS[key]()
        return _INSTANCES[key]
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() == ".jsonl" or path.exists():
        return load_task_file(path)
    raise TaskError(
        f"unknown task '{name_or_path}'",
        hint=f"use one of: {', '.join(task_names())}, or a path to a .jsonl task file",
    )


def list_tasks() -> list[Task]:
    """Every registered task (aliases not repeated), sorted by name; data is loaded only when a split is asked for."""
    return [get_task(name) for name in sorted(_TASKS)]
