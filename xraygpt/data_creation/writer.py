"""Old home of the data-creation atomic writers: they are :mod:`xraygpt.common.fileio` now."""
from xraygpt.common.fileio import atomic_write, atomic_write_json

__all__ = ["atomic_write", "atomic_write_json"]
