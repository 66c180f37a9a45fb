"""Images in chat messages: ``data:`` URLs and (only when allowed) files under one local folder.

Nothing is fetched from the network: http(s) URLs are refused, so a request cannot make
the server reach another machine. Every image goes through ``load_medical_image`` (PNG,
JPEG, DICOM), with the pixel count checked before and after decoding.
"""
from __future__ import annotations

import base64
import binascii
import io
import os
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlparse

from PIL import Image

from xraygpt.datasets.image_io import ImageLoadError, load_medical_image
from xraygpt.serve.errors import bad_request

DATA_URL_TYPES = ("image/png", "image/jpeg", "image/jpg", "application/dicom", "image/dicom", "application/octet-stream")


def _image_bytes(url: str, local_root: Optional[Path]) -> bytes:
    scheme = urlparse(url).scheme.lower() if "://" in url or url.startswith("data:") else ""
    if url.startswith("data:"):
        header, comma, payload = url[5:].partition(",")
        parts = header.split(";")
        if not comma or "base64" not in parts[1:]:
            raise bad_request("image data: URLs must be base64: data:image/png;base64,<data>", param="image_url")
        if parts[0].lower() not in DATA_URL_TYPES:
            raise bad_request(f"unsupported image type {parts[0]!r} in a data: URL; send PNG, JPEG or DICOM "
                              "(image/png, image/jpeg, application/dicom)", param="image_url")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("the image data: URL is not valid base64", param="image_url") from None
    if scheme in ("http", "https"):
        raise bad_request("remote image URLs are not fetched by this server; send the image inline as a "
                          "base64 data: URL (data:image/png;base64,...)", param="image_url", code="remote_url_refused")
    if scheme not in ("", "file"):
        raise bad_request(f"unsupported image URL scheme {scheme!r}; use a base64 data: URL", param="image_url")
    if local_root is None:
        raise bad_request("local image paths are not accepted: send a base64 data: URL, or start the server "
                          "with --allow-local-root DIR", param="image_url")
    path = Path(unquote(urlparse(url).path) if scheme == "file" else url)
    resolved = (local_root / path if not path.is_absolute() else path).resolve()
    if not resolved.is_relative_to(local_root):
        raise bad_request(f"image path is outside the allowed folder (--allow-local-root {local_root})", param="image_url")
    if not resolved.is_file():
        raise bad_request(f"image file not found under the allowed folder: {os.path.relpath(resolved, local_root)}",
                          param="image_url")
    return resolved.read_bytes()


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise bad_request(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
                          "(--max-image-pixels); send a smaller image", param="image_url", code="image_too_large")


def load_image_url(url: str, local_root: Optional[Path], max_pixels: int) -> Image.Image:
    """The RGB image an ``image_url`` names; a 400 :class:`APIError` says what is wrong otherwise."""
    data = _image_bytes(url, local_root)
    try:  # PIL reads the size from the header without decoding: refuse pixel bombs before decoding
        with Image.open(io.BytesIO(data)) as peek:
            _check_pixels(*peek.size, max_pixels)
    except Image.DecompressionBombError:
        raise bad_request(f"image has more pixels than --max-image-pixels {max_pixels}", param="image_url",
                          code="image_too_large") from None
    except (OSError, ValueError):
        pass  # not a raster PIL knows (e.g. DICOM) or broken: load_medical_image decides
    try:
        image = load_medical_image(data)
    except ImageLoadError as exc:
        raise bad_request(f"the image cannot be read: {exc.reason}", param="image_url", code="invalid_image") from None
    _check_pixels(*image.size, max_pixels)
    return image
