"""Ray Data: run a batch job over a Dataset on a pool of actors (``llmfanout[ray]``)."""

from ._base._public import publish
from ._rows._raymap import map_rows

__all__ = ["map_rows"]

publish(__name__, globals(), __all__)
