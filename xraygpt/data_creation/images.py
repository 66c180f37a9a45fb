"""Image export into the dataset's ``image/`` folder.

The project-wide loader ``xraygpt.datasets.image_io.load_medical_image`` is imported here
and nowhere else in data creation, so every image is decoded (and checked) the same way
as in training.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from xraygpt.common.fileio import atomic_write
from xraygpt.common.errors import DataError

COPYABLE_SUFFIXES = {".png", ".jpg", ".jpeg"}
IMAGE_FORMATS = ("copy", "jpeg")


class ImageExportError(DataError):
    """The source image cannot be read; the message names the file and the reason."""


def _load_rgb(path: Path):
    from xraygpt.datasets.image_io import ImageLoadError, load_medical_image

    try:
        return load_medical_image(path)
    except ImageLoadError as exc:
        raise ImageExportError(str(exc)) from exc


def _copy_bytes(source: Path):
    def write(handle) -> None:
        with source.open("rb") as src:
            shutil.copyfileobj(src, handle)

    return write


def output_name(stem: str, source: Path, image_format: str) -> str:
    """File name inside ``image/``: a safe stem plus the kept or new extension."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
    suffix = source.suffix.lower()
    if image_format == "copy" and suffix in COPYABLE_SUFFIXES:
        return safe + suffix
    return safe + (".jpg" if image_format == "jpeg" else ".png")


def export_image(source: Path, target: Path, image_format: str, jpeg_quality: int = 95) -> None:
    """Check that ``source`` decodes, then copy it (``copy``) or re-encode it (``jpeg``).

    ``copy`` keeps PNG/JPEG bytes untouched and converts anything else (e.g. DICOM) to PNG.
    An existing target is complete (it was renamed into place), so it is reused on resume.
    """
    if target.exists():
        return
    image = _load_rgb(source)
    if target.suffix == source.suffix.lower() and image_format == "copy":
        atomic_write(target, _copy_bytes(source))
    elif target.suffix == ".jpg":
        atomic_write(target, lambda handle: image.save(handle, format="JPEG", quality=jpeg_quality))
    else:
        atomic_write(target, lambda handle: image.save(handle, format="PNG"))
