"""The pjsua2 engine: one thread owns every pj object. The only package that imports pjsua2."""

# The product's version and the User-Agent it sends in SIP. The same as gateway's (checked by
# tests/test_units.py): defined here too so that sip imports nothing from gateway, and not
# only here because importing gateway (e.g. gateway.signing in an application) must not
# need sip.
__version__ = "0.1.0"
USER_AGENT = f"MiniVoice/{__version__}"
