"""Values several floors must agree on, defined once."""
from __future__ import annotations

IMAGE_PLACEHOLDER = "<ImageHere>"
"""Marks where the image embeddings go in a prompt; never tokenized."""
IMAGE_TAG = f"<Img>{IMAGE_PLACEHOLDER}</Img>"
"""An image turn, exactly as the original prompt files and model wrote it."""

IGNORE_INDEX = -100
"""Label of positions that carry no loss (prompt, image slots, padding): torch's cross-entropy default."""

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp")
"""File endings read as images (by ``datasets.image_io.load_medical_image``), in lookup order."""
