"""Every provider's batch API, by the name ``--provider`` gives it."""

from ._api import AnthropicBatchAPI, BatchAPI, OpenAIBatchAPI
from ._gemini import GeminiBatchAPI

APIS: dict[str, type[BatchAPI]] = {
    "openai": OpenAIBatchAPI,
    "anthropic": AnthropicBatchAPI,
    "gemini": GeminiBatchAPI,
}
