"""genmesh's HTTP edge: an ASGI app in front of the router (a gRPC client of it, with no engine
code) serving the OpenAI-compatible API; the web playground and the Converse bridge join it here."""
