"""Parse and strictly validate an actions document, both forms, before anything runs.

    {"actions": [{"conference": {"room": "a"}},            keyed form
                 {"type": "conference", "room": "b"}]}     typed form

Errors carry paths such as `actions[0].conference.room` (keyed) or
`actions[1].room` (typed), all of them collected in one pass.
"""

from __future__ import annotations

from typing import Any

from gateway.actions.base import Action
from gateway.actions.registry import ACTIONS
from gateway.strict import Detail, ValidationError, build, parse_json

MAX_ACTIONS = 50
MAX_BODY_BYTES = 64 * 1024
INVALID = "invalid action payload"


def parse_body(body: bytes) -> tuple[Action, ...]:
    """Parse the raw answer_url (or action_url) response body."""
    if len(body) > MAX_BODY_BYTES:
        raise ValidationError([Detail("", f"body larger than {MAX_BODY_BYTES} bytes")], INVALID)
    doc = parse_json(body, INVALID)
    return parse_document(doc)


def parse_document(doc: Any) -> tuple[Action, ...]:
    errors: list[Detail] = []
    if not isinstance(doc, dict):
        raise ValidationError(
            [Detail("", "must be a JSON object with an 'actions' array")], INVALID)
    items = doc.get("actions")
    if not isinstance(items, list):
        # Not an actions document: name none of its keys. The error goes back to the
        # application in call.completed, and echoing the keys of whatever JSON a URL
        # returned would let it read documents it cannot reach itself.
        raise ValidationError(
            [Detail("actions", "is required" if items is None else "must be an array")],
            INVALID)
    for key in doc:
        if key != "actions":
            errors.append(Detail(str(key)[:64], "unknown field"))
    if not 1 <= len(items) <= MAX_ACTIONS:
        errors.append(Detail("actions", f"must hold 1 to {MAX_ACTIONS} actions"))
    actions = tuple(_parse_one(item, f"actions[{i}]", errors) for i, item in enumerate(items))
    if errors:
        raise ValidationError(errors, INVALID)
    return actions


def _parse_one(item: Any, path: str, errors: list[Detail]) -> Action:
    if not isinstance(item, dict):
        errors.append(Detail(path, "must be an object"))
        return Action()
    if "type" in item:  # typed form
        name = item["type"]
        if not isinstance(name, str) or name not in ACTIONS:
            errors.append(Detail(f"{path}.type", f"unknown action {name!r}"))
            return Action()
        fields = {k: v for k, v in item.items() if k != "type"}
        return build(ACTIONS[name], fields, path, errors)
    if len(item) != 1:  # keyed form
        errors.append(
            Detail(path, "a keyed action has exactly one key (or use the typed form with 'type')")
        )
        return Action()
    ((name, fields),) = item.items()
    if name not in ACTIONS:
        errors.append(Detail(f"{path}.{name}", f"unknown action {name!r}"))
        return Action()
    return build(ACTIONS[name], fields, f"{path}.{name}", errors)
