"""Tasks: benchmark datasets as prompts with gold answers, fixed seeded splits and scorers.

    from t2cli.tasks import get_task
    task = get_task("gsm8k")              # or an alias ("math"), or "path/to/file.jsonl"
    items = task.split("train")           # TaskItem(id, prompt, answer, kind, meta)
    score = task.score(items[0], completion)   # Score(correct, extracted, reason)

Callers wrap ``item.prompt`` (and ``task.system_prompt`` when set) in the
model's chat template. docs/tasks.md lists the tasks and their split sizes.
"""

from t2cli.tasks.lookup import (
    get_task,
    list_tasks,
    needs_registry,
    register_task,
    register_task_factory,
    task_names,
    unlisted_task_names,
)
from t2cli.tasks.types import Score, Task, TaskError, TaskItem

# Importing these modules registers the built-in tasks.
from t2cli.tasks import choice_tasks, code_tasks, dispatch_task, math_tasks  # noqa: F401  isort: skip
from t2cli.tasks import python_tasks, story_tasks, vision_tasks, vqa_tasks  # noqa: F401  isort: skip

__all__ = [
    "Score",
    "Task",
    "TaskError",
    "TaskItem",
    "get_task",
    "list_tasks",
    "needs_registry",
    "register_task",
    "register_task_factory",
    "task_names",
    "unlisted_task_names",
]
