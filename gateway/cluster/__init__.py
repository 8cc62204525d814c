"""Rooms that span gateway nodes (issue 15; docs/cluster.md).

- `config`: the `cluster:` section;
- `ownership`: the pure core: who owns a room, what a node must do about it (claim, renew,
  step down, bridge to the owner), and whether an owner accepts a cascade leg (epoch fencing);
- `cascade`: the headers of a cascade leg, built and checked (pure);
- `redis_store`: the thin Redis adapter (Lua scripts for claim, renew, release);
- `node`: the asyncio side: rooms with a cluster-wide owner, cascade legs, the REST fan-out.
"""
