"""The vocabulary every layer speaks: messages, responses, advertised limits, small checks."""
