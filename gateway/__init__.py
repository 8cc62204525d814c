"""MiniVoice control plane: configuration, applications, action engine, webhooks, HTTP API."""

__version__ = "0.1.0"
USER_AGENT = f"MiniVoice/{__version__}"
