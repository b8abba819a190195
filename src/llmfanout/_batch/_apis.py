"""Every provider's batch API, by the name ``--provider`` gives it."""

from ._api import AnthropicBatchAPI, BatchAPI, OpenAIBatchAPI
from ._gemini import GeminiBatchAPI
from ._openai_embeddings import OpenAIEmbeddingsBatchAPI
from ._state import ENDPOINTS

APIS: dict[str, type[BatchAPI]] = {
    "openai": OpenAIBatchAPI,
    "anthropic": AnthropicBatchAPI,
    "gemini": GeminiBatchAPI,
}

EMBEDDING_APIS: dict[str, type[BatchAPI]] = {"openai": OpenAIEmbeddingsBatchAPI}


def api_class(name: str, endpoint: str = "chat") -> type[BatchAPI]:
    """The batch API of provider ``name`` for ``endpoint`` (``"chat"`` or ``"embeddings"``).

    Raises ``ValueError`` for a provider without a batch API for that endpoint.
    """
    table = EMBEDDING_APIS if endpoint == "embeddings" else APIS
    if endpoint not in ENDPOINTS or name not in table:
        raise ValueError(
            f"no batch API for {name} on the {endpoint!r} endpoint; embeddings batches "
            "are OpenAI's (--provider openai)"
        )
    return table[name]
