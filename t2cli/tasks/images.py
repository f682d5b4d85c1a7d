"""Image files shown with task items: checked once when a task loads, decoded only when used.

A task file names its images by path; ``check_image_file`` refuses, with the reason, a file
that is missing, that Pillow cannot decode, or that is over the limits below (a task of a few
thousand items must not hold gigabytes of pixels, and a decompression bomb must not get far).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from t2cli.tasks.types import TaskError

MAX_IMAGE_BYTES = 20_000_000  # 20 MB on disk
MAX_IMAGE_PIXELS = 40_000_000  # width x height, e.g. 8000 x 5000


@dataclass(frozen=True)
class ImageFile:
    """An image on disk (an ``ItemImage``): its path is kept, its pixels are read on ``open``."""

    path: Path

    @property
    def source(self) -> str:
        return str(self.path)

    def open(self) -> Image.Image:
        with Image.open(self.path) as image:
            return image.convert("RGB")


def check_image_file(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image (None when it can): checks size, format and pixel count.

    Pillow's ``verify`` reads the whole file without decoding it into memory, so a truncated
    or corrupt file is caught here rather than halfway through a training run.
    """
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is not a file"
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        return f"is {size / 1e6:.1f} MB, over the {MAX_IMAGE_BYTES // 1_000_000} MB limit for one image"
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                return (
                    f"is {width}x{height} pixels, over the {MAX_IMAGE_PIXELS // 1_000_000} million pixel "
                    "limit for one image"
                )
            image.verify()
    except (UnidentifiedImageError, Image.DecompressionBombError):
        return "is not an image Pillow can read"
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow raises these for truncated or damaged files
        return f"is not a readable image ({exc})"
    return None


def resolve_image(task_file: Path, where: str, value: object) -> tuple[ImageFile, ...]:
    """The images named by a task line's ``image`` field: a path (relative to the task file) or a list of them."""
    return image_files(task_file.parent, where, value)


def image_files(folder: Path, where: str, value: object) -> tuple[ImageFile, ...]:
    """The checked images ``value`` names: a path or a list of paths, relative to ``folder``.

    One ``TaskError`` line per problem, starting with ``where`` (a task line, ``t2 ask``'s
    ``--image``): a value that is not a path, or an image ``check_image_file`` refuses.
    """
    names: list = value if isinstance(value, list) else [value]
    if not names or not all(isinstance(name, str) and name.strip() for name in names):
        raise TaskError(
            f"{where}: 'image' must be a path or a non-empty list of paths, got {value!r}",
            hint=f'write paths relative to {folder}, e.g. "image": "images/cat.png"',
        )
    images = []
    for name in map(str, names):
        path = (folder / Path(name).expanduser()).resolve()
        problem = check_image_file(path)
        if problem is not None:
            resolved = "" if str(path) == name else f" ({path})"  # where a relative name led
            raise TaskError(
                f"{where}: image {name!r}{resolved} {problem}",
                hint=f"images are PNG, JPEG, WebP... files of at most {MAX_IMAGE_BYTES // 1_000_000} MB and "
                f"{MAX_IMAGE_PIXELS // 1_000_000} million pixels, named relative to {folder}",
            )
        images.append(ImageFile(path))
    return tuple(images)
