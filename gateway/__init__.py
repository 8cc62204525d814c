"""MiniVoice control plane: configuration, applications, action engine, webhooks, HTTP API."""

# Importing `gateway` must not import `sip`: applications import gateway.signing alone (the
# example app's image holds gateway/ only). sip/__init__.py has the same two constants for
# the SIP User-Agent (sip does not import gateway); tests/test_units.py checks they agree.
__version__ = "0.1.0"
USER_AGENT = f"MiniVoice/{__version__}"
