"""Tasks by name: ``@register_task`` on a ``Task`` subclass, ``get_task`` and ``list_tasks`` to find them.

A few tasks are built from the t2 registry rather than from a dataset (``dispatch``
draws its prompts from the tasks of the experts registered for a base model). They
are registered with ``register_task_factory(name, factory)`` and built by
``get_task(name, registry=..., base_model_id=...)``; ``needs_registry(name)`` tells a
command to load the base model before asking for them. ``list_tasks`` leaves them
out (they have no fixed splits to list), and also the tasks registered with
``listed=False``: those whose data is read from local files that may be absent
(TextVQA and OK-VQA in the HF cache), so that listing the tasks never fails.
"""

from __future__ import annotations

from collections.abc import Callable
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t2cli.tasks.custom import load_task_file
from t2cli.tasks.types import Task, TaskError, UnknownTask

_TASKS: dict[str, type[Task]] = {}
_ALIASES: dict[str, str] = {}
_INSTANCES: dict[str, Task] = {}
_FACTORIES: dict[str, Callable[[Any, int], Task]] = {}
_UNLISTED: set[str] = set()

if TYPE_CHECKING:
    from registry import Registry


def register_task(
    name: str, *, aliases: tuple[str, ...] = (), category: str = "", description: str = "", listed: bool = True
) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: make a ``Task`` subclass available as ``name`` (and its aliases, case-insensitive).

    ``listed=False`` leaves it out of ``list_tasks`` (its data may be absent from this machine).
    """

    def register(cls: type[Task]) -> type[Task]:
        key = name.lower()
        for taken in (key, *(a.lower() for a in aliases)):
            if taken in _TASKS or taken in _ALIASES or taken in _FACTORIES:
                raise ValueError(f"task name '{taken}' is already registered")
        cls.name, cls.aliases, cls.category = key, tuple(a.lower() for a in aliases), category or cls.category
        cls.description = description or cls.description
        _TASKS[key] = cls
        if not listed:
            _UNLISTED.add(key)
        for alias in cls.aliases:
            _ALIASES[alias] = key
        return cls

    return register


def register_task_factory(name: str, factory: Callable[[Registry, int], Task]) -> None:
    """Make ``name`` a task built from the registry: ``factory(registry, base_model_id)`` returns it."""
    key = name.lower()
    if key in _TASKS or key in _ALIASES or key in _FACTORIES:
        raise ValueError(f"task name '{key}' is already registered")
    _FACTORIES[key] = factory


def needs_registry(name_or_path: str) -> bool:
    """Whether the task called ``name_or_path`` is built from the registry (``get_task`` then needs it)."""
    return name_or_path.strip().lower() in _FACTORIES


def task_names() -> list[str]:
    """Registered task names and aliases, sorted."""
    return sorted([*_TASKS, *_ALIASES, *_FACTORIES])


def get_task(name_or_path: str, *, registry: Registry | None = None, base_model_id: int | None = None) -> Task:
    """The task called ``name_or_path`` (name or alias, any case), or one read from a ``.jsonl`` file.

    Named tasks are created once and shared, so their splits are loaded once.
    Tasks built from the registry (``needs_registry``) need ``registry`` and the
    ``base_model_id`` whose experts they draw on, and are built anew on every call.
    """
    key = name_or_path.strip().lower()
    key = _ALIASES.get(key, key)
    if key in _FACTORIES:
        if registry is None or base_model_id is None:
            raise TaskError(
                f"task '{key}' is built from the experts registered for a base model",
                hint=f"use it through `t2 train --task {key}` or `t2 eval --task {key}`",
            )
        return _FACTORIES[key](registry, base_model_id)
    if key in _TASKS:
        if key not in _INSTANCES:
            _INSTANCES[key] = _TASKS[key]()
        return _INSTANCES[key]
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() == ".jsonl" or path.exists():
        return load_task_file(path)
    close = get_close_matches(key, task_names(), n=1)
    raise UnknownTask(
        f"unknown task '{name_or_path}'",
        hint=(f"did you mean {close[0]!r}? " if close else "")
        + f"use one of: {', '.join(task_names())}, or a path to a .jsonl task file (see `t2 tasks`)",
    )


def list_tasks() -> list[Task]:
    """Every listed task (aliases not repeated), sorted by name; data is loaded only when a split is asked for."""
    return [get_task(name) for name in sorted(_TASKS) if name not in _UNLISTED]


def unlisted_task_names() -> list[str]:
    """The tasks ``list_tasks`` leaves out because their data is read from local files that may be absent."""
    return sorted(_UNLISTED)
