"""The pjsua2 engine: one thread owns every pj object. The only package that imports pjsua2."""
