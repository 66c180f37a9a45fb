"""BLIP-2 image processors: PIL RGB image -> normalised FloatTensor[3, S, S].

They use torchvision's PIL transforms so the eval path reproduces the
reference tensors bit for bit (tests/fixtures/seed_reference/inputs.pt).
There is deliberately no horizontal flip in training: left/right matters
in a radiograph ("left pleural effusion").
"""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from xraygpt.common.registry import registry

# The normalisation CLIP/EVA (and so BLIP-2) were trained with.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class TwoPassBicubicResize:
    """Bicubic resize to (height, width) as two explicit one-axis PIL passes.

    Pillow rounds to 8 bit between its horizontal and vertical passes, and
    Pillow 13 changed which pass runs first (vertical first when the height
    shrinks more than twice as much as the width).  Doing the passes
    ourselves in Pillow 13's order gives the same pixels on every Pillow
    version, so the eval tensors match the reference fixture exactly.
    """

    def __init__(self, size: tuple[int, int]):
        self.height, self.width = size

    def __call__(self, image: Image.Image) -> Image.Image:
        shrink_h, shrink_w = image.height - self.height, image.width - self.width
        vertical_first = shrink_h > 0 and shrink_h > 2 * shrink_w
        for axis in ("vertical", "horizontal") if vertical_first else ("horizontal", "vertical"):
            if axis == "horizontal" and image.width != self.width:
                image = image.resize((self.width, image.height), Image.Resampling.BICUBIC)
            elif axis == "vertical" and image.height != self.height:
                image = image.resize((image.width, self.height), Image.Resampling.BICUBIC)
        return image

    def __repr__(self) -> str:
        return f"TwoPassBicubicResize(size=({self.height}, {self.width}))"


class _ImageProcessor:
    def __init__(self, image_size: int, mean: Sequence[float] | None, std: Sequence[float] | None):
        if int(image_size) < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size}")
        self.image_size = int(image_size)
        self.normalize = transforms.Normalize(tuple(mean or CLIP_MEAN), tuple(std or CLIP_STD))
        self.transform: transforms.Compose

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image_size={self.image_size})"


@registry.register_processor("blip2_image_train")
class Blip2ImageTrainProcessor(_ImageProcessor):
    """Random resized crop (area 50-100 %), bicubic, CLIP normalisation."""

    def __init__(
        self,
        image_size: int = 224,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        min_scale: float = 0.5,
        max_scale: float = 1.0,
    ):
        super().__init__(image_size, mean, std)
        self.transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(
                    self.image_size, scale=(min_scale, max_scale), interpolation=InterpolationMode.BICUBIC
                ),
                transforms.ToTensor(),
                self.normalize,
            ]
        )


@registry.register_processor("blip2_image_eval")
class Blip2ImageEvalProcessor(_ImageProcessor):
    """Bicubic resize to image_size x image_size (aspect not kept, as in BLIP-2), CLIP normalisation."""

    def __init__(self, image_size: int = 224, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__(image_size, mean, std)
        self.transform = transforms.Compose(
            [
                TwoPassBicubicResize((self.image_size, self.image_size)),
                transforms.ToTensor(),
                self.normalize,
            ]
        )
