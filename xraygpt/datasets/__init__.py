"""Medical image loading, image-text datasets, builders, mixing, validation and the phantom generator."""
from xraygpt.datasets import builders  # noqa: F401  (registers openi, roco, medvqa, mimic, phantoms)
from xraygpt.datasets.caption_dataset import BadSampleError, ImageTextDataset, collate
from xraygpt.datasets.image_io import ImageLoadError, load_medical_image
from xraygpt.datasets.mixing import MixtureDataset, build_datasets

__all__ = [
    "BadSampleError",
    "ImageLoadError",
    "ImageTextDataset",
    "MixtureDataset",
    "build_datasets",
    "collate",
    "load_medical_image",
]
