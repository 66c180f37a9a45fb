"""Batched generation over datasets, shared by evaluation, validation during training and the quick start."""
from xraygpt.inference.records import generate_records

__all__ = ["generate_records"]
