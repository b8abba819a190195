"""Provider batch jobs: the OpenAI and Anthropic batch APIs, their wire formats, the state file."""
