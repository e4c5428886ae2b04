"""The router: the public API, dispatching to modality services and the sandbox."""
