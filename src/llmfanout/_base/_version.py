"""The package's version, in one place (``llmfanout.__version__`` re-exports it)."""

VERSION = "0.1.0.dev0"
