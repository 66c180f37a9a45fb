"""Image and text processors, registered by name for configs."""
from xraygpt.processors import image_processors, text_processors  # noqa: F401  (registration)
from xraygpt.processors.base import build_processor
from xraygpt.processors.image_processors import CLIP_MEAN, CLIP_STD, Blip2ImageEvalProcessor, Blip2ImageTrainProcessor
from xraygpt.processors.text_processors import BlipCaptionProcessor

__all__ = [
    "build_processor",
    "Blip2ImageEvalProcessor",
    "Blip2ImageTrainProcessor",
    "BlipCaptionProcessor",
    "CLIP_MEAN",
    "CLIP_STD",
]
