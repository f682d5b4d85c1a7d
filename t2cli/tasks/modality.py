"""Whether a task and a model can work together: images need a vision-language model, and an
expert on a vision tower or projector needs images to learn anything.

``t2 train`` / ``t2 eval`` / ``t2 adapt`` call ``check_task_fits_model`` once the task and the
model's targets are known, before anything is generated or written.
"""

from __future__ import annotations

from collections.abc import Sequence

from t2cli.models.targets import TargetMatrix, is_vision_language
from t2cli.tasks.types import Task, TaskError


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
