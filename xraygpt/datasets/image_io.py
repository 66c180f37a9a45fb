"""Medical image loading: one function every path (datasets, demo, CLI) calls.

Why not just ``Image.open(path).convert("RGB")``?  Because medical files break
it in quiet ways: 16-bit PNGs clip to white, RGBA/CMYK/palette files need a
policy, DICOM needs rescale + window + MONOCHROME1 inversion, extensions lie,
and truncated files otherwise fail later inside a DataLoader worker with no
file name.  Here each of those cases either loads correctly or raises
:class:`ImageLoadError` naming the file and the reason.

Policies (documented in docs/data.md):

* 16-bit / 32-bit / float grey images are min-max scaled to 8 bit (an image
  stored as 8-bit values x 257 round-trips exactly).
* Alpha is *dropped*, not composited: radiograph pixels are not meant to be
  blended, and transparency in exported films is an export artefact.
* DICOM: modality LUT (RescaleSlope/Intercept), then the first
  WindowCenter/WindowWidth pair (or the VOI LUT sequence), else the min-max
  range; MONOCHROME1 is inverted; multi-frame files give their middle frame
  (:func:`load_medical_views` gives every frame, for studies read as views).
* Images smaller than :data:`MIN_SIDE` pixels on a side are rejected: a 1x1
  "image" carries no information and breaks crops and normalisation.
"""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, List, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from xraygpt.common.constants import DICOM_SUFFIXES
from xraygpt.common.errors import DataError

ImageSource = Union[str, os.PathLike, bytes, bytearray, BinaryIO]

MIN_SIDE = 8
"""Smallest accepted width/height in pixels."""

_DICOM_SUFFIXES = set(DICOM_SUFFIXES)


class ImageLoadError(DataError):
    """An image that cannot be used, with the file and the reason."""

    def __init__(self, source: object, reason: str):
        self.path = str(source)
        self.reason = reason
        super().__init__(f"cannot load image {self.path}: {reason}")


def load_medical_image(source: ImageSource) -> Image.Image:
    """Load a PNG/JPEG (any mode) or DICOM file as an 8-bit RGB PIL image.

    ``source`` is a path, raw bytes or a binary file object.  The format is
    sniffed from the content, so a PNG named ``.jpg`` loads.  Raises
    :class:`ImageLoadError` for missing, empty, truncated, corrupt,
    non-image and degenerate inputs.
    """
    name, data = _read_bytes(source)
    image, ds, frames = _decode(name, data)
    if image is None:
        image = _dicom_frame_to_rgb(frames[len(frames) // 2], ds)
    return _checked_size(name, image)


@dataclass(frozen=True)
class MedicalView:
    """One image of a file: a PNG/JPEG, or one frame of a DICOM with the view its header names."""

    image: Image.Image
    view: Optional[str]
    """DICOM ``ViewPosition`` (``PA``, ``AP``, ``LL``, ``LATERAL`` ...) when the file has one, else None."""
    frame: Optional[int]
    """0-based frame of a multi-frame DICOM, else None."""


def load_medical_views(source: ImageSource) -> List[MedicalView]:
    """Every image of a file as :func:`load_medical_image` loads it: one per DICOM frame, one for PNG/JPEG.

    Where a study is read as views (chat uploads), a multi-frame DICOM gives each frame as a view of its own,
    named by the file's ``ViewPosition``; :func:`load_medical_image` keeps the middle frame for datasets.
    """
    name, data = _read_bytes(source)
    image, ds, frames = _decode(name, data)
    if image is not None:
        return [MedicalView(_checked_size(name, image), None, None)]
    view = str(ds.get("ViewPosition") or "").strip().upper() or None
    return [MedicalView(_checked_size(name, _dicom_frame_to_rgb(frame, ds)), view, i if len(frames) > 1 else None)
            for i, frame in enumerate(frames)]


def _decode(name: str, data: bytes) -> Tuple[Optional[Image.Image], Any, List[np.ndarray]]:
    """``(image, None, [])`` for PNG/JPEG content, ``(None, data set, frames)`` for DICOM."""
    if not data:
        raise ImageLoadError(name, "file is empty (0 bytes)")
    if data[128:132] == b"DICM":  # Part-10 files: "DICM" after a 128-byte preamble
        return (None, *_read_dicom(name, data))
    try:
        return _load_raster(name, data), None, []
    except _Unrecognised:
        if Path(name).suffix.lower() not in _DICOM_SUFFIXES:
            raise
    try:  # a raw DICOM data set without the Part-10 preamble?
        return (None, *_read_dicom(name, data))
    except ImageLoadError as exc:
        raise ImageLoadError(name, f"neither a recognised image nor a readable DICOM data set ({exc.reason})") from None


def _checked_size(name: str, image: Image.Image) -> Image.Image:
    if min(image.size) < MIN_SIDE:
        w, h = image.size
        raise ImageLoadError(
            name, f"image is {w}x{h} pixels, smaller than the {MIN_SIDE}-pixel minimum side (degenerate image)"
        )
    return image


class _Unrecognised(ImageLoadError):
    """Pillow does not know the content; a ``.dcm`` file then gets a second try as raw DICOM."""


# --------------------------------------------------------------------- input
def _read_bytes(source: ImageSource) -> tuple[str, bytes]:
    if isinstance(source, (bytes, bytearray)):
        return "<bytes>", bytes(source)
    if hasattr(source, "read"):
        name = str(getattr(source, "name", "<file object>"))
        return name, source.read()
    path = Path(os.fspath(source))
    if not path.exists():
        raise ImageLoadError(path, "file not found (check the path and the dataset's storage folder)")
    if path.is_dir():
        raise ImageLoadError(path, "is a directory, expected an image file")
    try:
        return str(path), path.read_bytes()
    except OSError as exc:
        raise ImageLoadError(path, f"file cannot be read ({exc.strerror or exc})") from exc


# -------------------------------------------------------------- PNG / JPEG
def _load_raster(name: str, data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        # The content is not quoted: the path may be a symlink to a private file.
        raise _Unrecognised(name, f"not a recognised image ({len(data)} bytes of unknown content); expected PNG, JPEG "
                                  "or DICOM") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(name, f"image too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(name, f"file is truncated or corrupt ({exc})") from None
    image = ImageOps.exif_transpose(image)
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("L", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "1", "RGBX"):
        # RGBA -> RGB drops alpha (policy above); CMYK/YCbCr use Pillow's converters.
        return image.convert("RGB")
    if mode in ("LA", "La"):
        return image.getchannel("L").convert("RGB")
    if mode in ("P", "PA"):
        return image.convert("RGBA").convert("RGB")
    if mode.startswith("I") or mode == "F":
        grey = _scale_to_uint8(np.asarray(image, dtype=np.float64))
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Min-max scale to 0..255; a constant image maps to 0."""
    arr = arr.astype(np.float64, copy=False)
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


# --------------------------------------------------------------------- DICOM
def _read_dicom(name: str, data: bytes) -> Tuple[Any, List[np.ndarray]]:
    """The data set and its decoded frames (one for a single-frame file)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as exc:
        raise ImageLoadError(name, f"not a readable DICOM file ({exc})") from None
    if "PixelData" not in ds:
        raise ImageLoadError(name, "DICOM file has no pixel data (PixelData element missing)")
    try:
        arr = ds.pixel_array
    except (RuntimeError, NotImplementedError) as exc:  # pydicom: no plugin for this compression
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax_name = getattr(syntax, "name", syntax) or "unknown transfer syntax"
        raise ImageLoadError(
            name,
            f"no decoder for compressed DICOM ({syntax_name}); install pylibjpeg with pylibjpeg-openjpeg/-libjpeg "
            f"or python-gdcm ({exc})",
        ) from None
    except Exception as exc:  # ValueError and friends: the pixel bytes do not match the header
        raise ImageLoadError(name, f"DICOM pixel data cannot be decoded, file truncated or corrupt ({exc})") from None

    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    return ds, list(arr) if frames > 1 else [arr]


def _dicom_frame_to_rgb(arr: np.ndarray, ds: Any) -> Image.Image:
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        grey = _dicom_grey_to_uint8(arr, ds)
        if photometric == "MONOCHROME1":
            grey = 255 - grey
        return Image.fromarray(grey, mode="L").convert("RGB")
    return Image.fromarray(_dicom_colour_to_uint8(arr, ds, photometric), mode="RGB")


def _dicom_grey_to_uint8(arr: np.ndarray, ds) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(arr, ds).astype(np.float64)
    window = _first_window(ds)
    if window is not None:
        # pydicom's own windowing output range depends on BitsStored and rescale;
        # we want 8 bit, so map the window straight onto 0..255.
        center, width = window
        low = center - width / 2.0
        scaled = np.clip((values - low) / width, 0.0, 1.0)
        return np.round(scaled * 255.0).astype(np.uint8)
    if "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float64)
    return _scale_to_uint8(values)


def _first_window(ds) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    # Several windows may be listed (e.g. [450, 200]); the first is the default view.
    center = center[0] if _is_sequence(center) else center
    width = width[0] if _is_sequence(width) else width
    if float(width) <= 0:
        return None
    return float(center), float(width)


def _is_sequence(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def _dicom_colour_to_uint8(arr: np.ndarray, ds, photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
    # pydicom already converts YBR_* to RGB when decoding.
    if arr.dtype != np.uint8:
        arr = _scale_to_uint8(arr)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ImageLoadError(getattr(ds, "filename", "<dicom>"), f"unsupported DICOM colour layout {arr.shape} ({photometric})")
    return np.ascontiguousarray(arr)
