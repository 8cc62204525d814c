"""The SIP edge: Kamailio in front of the gateway (registrar, digest authentication, flood
and scanner defences). Its configuration schema (`config`), the SIP users it authenticates
(`users`, `users_cli`), and the process that renders edge/kamailio.cfg.tmpl and runs Kamailio
(`kamailio`). docs/edge.md says what it does for users."""
