"""Valid documents to start from: answer_url action lists (both forms, every action, nested
prompts), and the REST bodies the OpenAPI document describes. `base` is the URL of a server
the fuzzed URLs may point at (the test application), so some of them are fetched for real."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from gateway.actions.registry import ACTIONS
from gateway.strict import _shape


def action(rng: random.Random, base: str, *, live: bool = False) -> dict[str, Any]:
    """One valid action in the keyed form. With `live`, nothing that keeps a call long or
    dials out (a real call runs it)."""
    names = ["conference", "play", "say", "pause", "gather", "redirect", "hangup"]
    if not live:
        names.append("transfer")
    name = rng.choice(names)
    room = rng.choice(("r1", "fuzz-room", "a.b_c-d", "R" * 128))
    prompt = {"say": {"text": rng.choice(("hi", "press one")), "voice": rng.choice(
        ("en", "en-us", "de+f2"))}} if rng.random() < 0.5 else {
        # ?v=: a URL of its own, so the cache does not answer for the fuzzed media
        "play": {"url": base + "/media/" + rng.choice(("tone", "bad")) + f"?v={rng.random()}",
                 "loop": rng.randrange(0, 3)}}
    table: dict[str, dict[str, Any]] = {
        "conference": {"room": room, "mute": rng.random() < 0.3, "beep": rng.choice(
            ("none", "enter", "exit", "both")), "max_participants": rng.randrange(2, 1001),
            "start_on_enter": True, "end_on_exit": rng.random() < 0.3, "dtmf_controls": None,
            "wait_url": rng.choice(("", base + "/media/tone")), "record": False,
            "status_url": base + "/events"},
        "play": {"url": base + "/media/" + rng.choice(("tone", "bad")) + f"?v={rng.random()}",
                 "loop": rng.randrange(0, 101)},
        "say": {"text": "hello " * rng.randrange(1, 20), "loop": rng.randrange(0, 101),
                "voice": "en-us"},
        "pause": {"length": rng.choice((0, 0.2, 1, 3600))},
        "gather": {"action_url": base + "/hook/g", "num_digits": rng.randrange(1, 65),
                   "timeout": rng.choice((1, 5.5, 120)), "finish_on_key": rng.choice(
                       ("#", "*", "", "0")), **prompt},
        "redirect": {"url": base + "/hook/r"},
        "hangup": {"reason": "done"},
        "transfer": {"to": rng.choice(("sip:2002@127.0.0.1:5999", "alice", "sips:x@[::1]")),
                     "caller_id": "+4930123", "timeout": rng.choice((1, 30, 600))},
    }
    fields = table[name]
    # drop optional fields at random, keeping the required ones
    _, dc_fields = _shape(ACTIONS[name])
    required = {n for n, f in dc_fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    fields = {k: v for k, v in fields.items() if k in required or rng.random() < 0.6}
    if live and name == "pause":
        fields["length"] = 0.2
    if live and name == "conference":
        fields["end_on_exit"] = True
    return {name: fields}


def actions_document(rng: random.Random, base: str, *, live: bool = False) -> dict[str, Any]:
    items = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        a = action(rng, base, live=live)
        if rng.random() < 0.3:  # the typed form
            ((name, fields),) = a.items()
            a = {"type": name, **fields}
        items.append(a)
    if live and rng.random() < 0.7:
        items.append({"hangup": {}})
    return {"actions": items}


def field_names() -> tuple[str, ...]:
    """Every field name of every action, and the action names: keys to put where they do not
    belong."""
    names = set(ACTIONS)
    for cls in ACTIONS.values():
        names.update(_shape(cls)[1])
    return tuple(sorted(names | {"actions", "type", "call", "to", "from", "speak_to"}))


def call_request(rng: random.Random, base: str) -> dict[str, Any]:
    body: dict[str, Any] = {"to": rng.choice(("sip:2002@127.0.0.1:5999", "alice")),
                            "from": "+4930123", "application_id": "app_test",
                            "timeout": rng.choice((1, 30, 600))}
    if rng.random() < 0.5:
        body["answer_url"] = base + "/answer"
    else:
        body["actions"] = actions_document(rng, base)["actions"]
    return body


def patch(rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {"muted": rng.random() < 0.5, "hold": rng.random() < 0.5,
                            "speak_to": rng.choice((None, [], ["call_abc"], ["call_x", "call_y"]))}
    keys = rng.sample(sorted(body), rng.randrange(1, 4))
    return {k: body[k] for k in keys}


def announcement(rng: random.Random, base: str) -> dict[str, Any]:
    if rng.random() < 0.5:
        return {"say": {"text": "attention", "loop": rng.randrange(1, 11), "voice": "en"}}
    return {"play": {"url": base + "/media/tone", "loop": rng.randrange(1, 11)}}
