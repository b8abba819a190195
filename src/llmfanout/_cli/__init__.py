"""The ``llmfanout`` command: one module per subcommand, parsing and display only."""
