"""Whether a task and a model can work together: images need a vision-language model, and an
expert on a vision tower or projector needs images to learn anything.

``t2 train`` / ``t2 eval`` call ``check_model_fits_task`` once the task, the model and its
targets are named: it reads the model's config only, so a misfit is refused before the model
loads and before anything is written (no decomposition, no run, no expert).
"""

from __future__ import annotations

from collections.abc import Sequence

from t2cli.models.identity import config_depths, read_config
from t2cli.models.resolve import resolve_model
from t2cli.models.targets import NAMED_LANGUAGE_GROUPS, TargetMatrix, is_vision_language, select_targets
from t2cli.tasks.types import Task, TaskError


def check_model_fits_task(task: Task, model: str | None, targets: str) -> None:
    """``check_task_fits_model`` for the model a command names, from its config alone.

    ``all``, ``attn`` and ``mlp`` select language-model matrices only, which fit any text task:
    a text task with one of them needs no config read (the embedded GGUF's takes a while).
    """
    if targets in NAMED_LANGUAGE_GROUPS and not task.uses_images():
        return
    ref = resolve_model(model)
    config = read_config(ref)
    num_layers, vision_layers = config_depths(config)
    chosen = select_targets(config.model_type, num_layers, targets, vision_layers=vision_layers)
    check_task_fits_model(task, ref.name, config.model_type, chosen)


def check_task_fits_model(task: Task, model_name: str, model_type: str, targets: Sequence[TargetMatrix]) -> None:
    """TaskError, one line, when ``task`` cannot run on or train ``targets`` of ``model_name``.

    - a task with images on a text-only model: the model has no way to see them;
    - a text-only task when the targets include the vision tower or the projector: those
      matrices only act on images, so training them on text would change nothing (every
      gradient is zero) and evaluating an expert on them would measure the base model.
    A vision-language model with language-model targets takes a text task as a text model does.
    """
    images = task.uses_images()
    vlm = is_vision_language(model_type)
    if images and not vlm:
        raise TaskError(
            f"task '{task.name}' shows images, but {model_name} (model_type {model_type}) is a text-only model",
            hint="use a vision-language model (e.g. smolvlm-256m, qwen2-vl-2b, llava-next-8b; see `t2 models`)",
        )
    image_side = sorted({t.part for t in targets} - {"language"})
    if vlm and not images and image_side:
        raise TaskError(
            f"task '{task.name}' has no images, but the targets adapt the {' and '.join(image_side)} of {model_name}, "
            "which only images reach",
            hint="train on a task with images (e.g. shapes), or target the language model (--targets all)",
        )
