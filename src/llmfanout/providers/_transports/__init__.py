"""HTTP transports: our connection pool over anyio streams, and an adapter over httpx."""
