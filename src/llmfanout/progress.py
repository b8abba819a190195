"""Progress display for library runs: ``on_result=ProgressBar(len(tasks))``."""

from ._base._public import publish
from ._report._progressbar import ProgressBar

__all__ = ["ProgressBar"]

publish(__name__, globals(), __all__)
