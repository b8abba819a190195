"""Reports on a run: the summary, its cost, the library's progress bar."""
