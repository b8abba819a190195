"""Ray Data: run a batch job over a Dataset on a pool of actors (``llmfanout[ray]``)."""

from ._rows._raymap import map_rows

__all__ = ["map_rows"]
