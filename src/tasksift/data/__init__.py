"""Data layer: read files/datasets, detect layouts, normalise to Examples, write subsets."""
from .example import Example, content_id
from .loading import LoadedData, load_examples

__all__ = ["Example", "LoadedData", "content_id", "load_examples"]
