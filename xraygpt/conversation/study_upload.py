"""The files a user uploads for one chat become the views of a study, each with its view name.

Every PNG/JPEG is one view and every frame of a DICOM is one (a multi-frame file or a series of several
files), in upload order.  Each view's name comes from the DICOM header (``ViewPosition``: ``PA``, ``AP``,
``LL``, ``LATERAL`` ...), else the user's choice, else a hint in the file name (``chest_PA.png``,
``lat.dcm``), else none; the chat then writes it before the view's image as the data path writes an
entry's ``views`` (``model.view_template``, e.g. ``PA: <Img><ImageHere></Img> LATERAL: <Img>...``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from PIL import Image

from xraygpt.common.errors import DataError

FILENAME_HINTS = {"pa": "PA", "ap": "AP", "frontal": "FRONTAL", "lat": "LATERAL", "lateral": "LATERAL",
                  "ll": "LL", "rl": "RL"}
"""Whole words of a file name (split at anything but letters and digits) that name its view."""

_VIEW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _/-]{0,23}")  # prompt-safe: no template or image tags


@dataclass(frozen=True)
class UploadedView:
    image: Image.Image
    view: Optional[str]
    label: str
    """What the user uploaded it as: the file name, with the frame for a multi-frame DICOM."""


def view_from_filename(name: str) -> Optional[str]:
    """``'chest_PA.png'`` -> ``'PA'``; no hint, or hints of two different views, -> None."""
    words = re.split(r"[^a-z0-9]+", Path(name).stem.lower())
    found = {FILENAME_HINTS[w] for w in words if w in FILENAME_HINTS}
    return found.pop() if len(found) == 1 else None


def parse_view_names(text: Optional[str]) -> List[Optional[str]]:
    """The user's choice, ``'PA, LATERAL'`` -> ``['PA', 'LATERAL']`` (an empty entry names nothing);
    no text -> ``[]``.  A name with other characters than letters, digits, space, ``_/-`` is refused."""
    if not text or not text.strip():
        return []
    names = [part.strip() or None for part in text.split(",")]
    for name in names:
        if name is not None and not _VIEW_NAME.fullmatch(name):
            raise DataError(f"view name {name[:30]!r} is not allowed: use up to 24 letters, digits, spaces or _/- "
                            "(e.g. PA, AP, LATERAL), separated by commas")
    return names


def load_study_upload(paths: Sequence[str], max_images: int,
                      chosen: Sequence[Optional[str]] = ()) -> List[UploadedView]:
    """The views of the uploaded files, named; a DataError (one line) above ``max_images`` views or when
    ``chosen`` names another count of views.  Unreadable files raise :class:`ImageLoadError` (it names the file)."""
    from xraygpt.datasets.image_io import load_medical_views

    loaded = [(Path(p).name, load_medical_views(p)) for p in paths]
    count = sum(len(views) for _, views in loaded)
    if count > max_images:
        parts = ", ".join(f"{name}: {len(views)} frames" if len(views) > 1 else name for name, views in loaded)
        raise DataError(f"the upload ({parts}) holds {count} images, but this model reads at most {max_images} per "
                        "study (model.max_images): upload fewer files or frames")
    if chosen and len(chosen) != count:
        raise DataError(f"{len(chosen)} view names given for {count} images: give one per image in upload order "
                        "(leave an entry empty for no name), or none")
    out: List[UploadedView] = []
    for name, views in loaded:
        for view in views:
            header = view.view if view.view and _VIEW_NAME.fullmatch(view.view) else None
            choice = chosen[len(out)] if chosen else None
            label = name if view.frame is None else f"{name} frame {view.frame + 1}"
            out.append(UploadedView(view.image, header or choice or view_from_filename(name), label))
    return out
