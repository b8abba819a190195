"""HTTP transports: the protocol, values and body stream they share (``_base``), our
HTTP/1.1 pool over anyio streams (``_pool``, parsing with ``_h1``, reaching origins with
``_origin``), and the adapter over httpx (``_httpx``)."""
