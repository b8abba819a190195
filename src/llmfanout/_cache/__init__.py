"""The response cache: request keys, the SQLite and Redis stores, one call per identical request."""
