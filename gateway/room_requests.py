"""The bodies of the room REST requests, validated before anything changes (pure).

    PATCH /v1/conferences/{room}/participants/{call_id}
        {"muted": bool, "hold": bool, "speak_to": ["call_…", …] | null}   (one or more)
    POST /v1/conferences/{room}/announcements
        {"say": {<say action fields>}} or {"play": {<play action fields>}}

Every problem is reported at once, as (path, reason) details like the actions schema's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gateway.actions.play import Play
from gateway.actions.say import Say
from gateway.strict import Detail, ValidationError, build, parse_json

MAX_SPEAK_TO = 100
MAX_ANNOUNCEMENT_LOOP = 10
_CALL_ID = re.compile(r"call_[A-Za-z0-9_-]{1,64}")
_UNSET: Any = object()


@dataclass(frozen=True)
class ParticipantPatch:
    muted: bool | None = None
    hold: bool | None = None
    speak_to: tuple[str, ...] | None = _UNSET  # _UNSET: not given; None: everyone

    @property
    def sets_speak_to(self) -> bool:
        return self.speak_to is not _UNSET


def parse_patch(body: bytes) -> ParticipantPatch:
    doc = parse_json(body, "invalid body")
    if not isinstance(doc, dict):
        raise ValidationError([Detail("", "must be a JSON object")], "invalid body")
    errors: list[Detail] = []
    for key in doc:
        if key not in ("muted", "hold", "speak_to"):
            errors.append(Detail(str(key)[:64], "unknown field"))
    if not doc:
        errors.append(Detail("", "give at least one of muted, hold, speak_to"))
    values: dict[str, Any] = {}
    for key in ("muted", "hold"):
        if key in doc:
            if isinstance(doc[key], bool):
                values[key] = doc[key]
            else:
                errors.append(Detail(key, "must be a boolean"))
    if "speak_to" in doc:
        targets = doc["speak_to"]
        if targets is None:
            values["speak_to"] = None
        elif not isinstance(targets, list):
            errors.append(Detail("speak_to", "must be a list of call IDs or null"))
        elif len(targets) > MAX_SPEAK_TO:
            errors.append(Detail("speak_to", f"at most {MAX_SPEAK_TO} call IDs"))
        else:
            bad = [i for i, t in enumerate(targets)
                   if not isinstance(t, str) or not _CALL_ID.fullmatch(t)]
            errors.extend(Detail(f"speak_to[{i}]", "must be a call ID (call_…)")
                          for i in bad[:10])
            if not bad:
                values["speak_to"] = tuple(dict.fromkeys(targets))
    if errors:
        raise ValidationError(errors, "invalid body")
    return ParticipantPatch(**values)


def parse_announcement(body: bytes) -> Say | Play:
    doc = parse_json(body, "invalid body")
    if not isinstance(doc, dict) or len(doc) != 1 or next(iter(doc)) not in ("say", "play"):
        raise ValidationError([Detail("", 'must be {"say": {...}} or {"play": {...}}')],
                              "invalid body")
    ((kind, fields),) = doc.items()
    errors: list[Detail] = []
    prompt: Say | Play = (build(Say, fields, kind, errors) if kind == "say"
                          else build(Play, fields, kind, errors))
    if not errors and not 1 <= prompt.loop <= MAX_ANNOUNCEMENT_LOOP:
        errors.append(Detail(f"{kind}.loop",
                             f"must be 1 to {MAX_ANNOUNCEMENT_LOOP} for an announcement"))
    if errors:
        raise ValidationError(errors, "invalid body")
    return prompt
