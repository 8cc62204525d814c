"""Calls on the control plane.

- `record`: a call's state, timeline, JSON views and end classification, as plain data;
- `services`: the narrow services a session uses, as one value (fakes in tests);
- `session`: the asyncio side, implementing the actions' `CallContext`;
- `outbound`: placing an outbound leg (one finish path with inbound calls);
- `table`: the live calls, in memory and in SQLite (crash-only recovery).
"""
