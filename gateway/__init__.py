"""MiniVoice control plane: configuration, applications, action engine, webhooks, HTTP API."""

from sip import USER_AGENT, __version__

__all__ = ["USER_AGENT", "__version__"]
