"""Progress display for library runs: ``on_result=ProgressBar(len(tasks))``."""

from ._report._progressbar import ProgressBar

__all__ = ["ProgressBar"]
