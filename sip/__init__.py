"""The pjsua2 engine: one thread owns every pj object. The only package that imports pjsua2."""

# The product's version and the User-Agent it sends in SIP and HTTP. Defined here, the lower
# layer, so that `sip` needs nothing from `gateway`; `gateway` re-exports both.
__version__ = "0.1.0"
USER_AGENT = f"MiniVoice/{__version__}"
