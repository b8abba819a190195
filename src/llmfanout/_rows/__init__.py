"""Row jobs: JSONL rows in, one output row per input row out, crash-safe, on one or many hosts."""
