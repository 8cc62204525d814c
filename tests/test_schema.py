"""The action document schema: both forms, every rule, all errors at once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.actions.conference import Conference
from gateway.actions.hangup import Hangup
from gateway.actions.pause import Pause
from gateway.actions.schema import MAX_ACTIONS, parse_body, parse_document
from gateway.strict import ValidationError


def paths(doc: Any) -> list[str]:
    with pytest.raises(ValidationError) as err:
        parse_document(doc)
    assert str(err.value).startswith("invalid action payload")
    return [d.path for d in err.value.details]


def test_seed_example_parses() -> None:
    assert parse_document({"actions": [{"conference": {"room": "support-room-1001"}}]}) == (
        Conference(room="support-room-1001"),)


def test_both_forms_mix_in_one_list() -> None:
    doc = {"actions": [
        {"type": "conference", "room": "a.b_c-1", "mute": True, "end_on_exit": True},
        {"conference": {"room": "Z", "mute": False}},
        {"pause": {"length": 2}},
        {"type": "hangup", "reason": "done"},
    ]}
    assert parse_document(doc) == (
        Conference("a.b_c-1", mute=True, end_on_exit=True), Conference("Z"),
        Pause(2.0), Hangup("done"))


def test_defaults() -> None:
    (c,) = parse_document({"actions": [{"conference": {"room": "r"}}]})
    assert isinstance(c, Conference) and (c.mute, c.end_on_exit) == (False, False)


@pytest.mark.parametrize("room", ["a", "A" * 128, "support-room-1001", "x.y_z-0"])
def test_valid_room_names(room: str) -> None:
    assert parse_document({"actions": [{"conference": {"room": room}}]})[0] == Conference(room)


@pytest.mark.parametrize("room", ["", "A" * 129, "has space", "slash/", "ünï", "a@b", "r#1"])
def test_invalid_room_names_both_forms(room: str) -> None:
    assert paths({"actions": [{"conference": {"room": room}}]}) == ["actions[0].conference.room"]
    assert paths({"actions": [{"type": "conference", "room": room}]}) == ["actions[0].room"]


@pytest.mark.parametrize("field,value", [
    ("room", 5), ("room", None), ("room", ["a"]), ("mute", "true"), ("mute", 1),
    ("end_on_exit", 0), ("end_on_exit", None),
])
def test_wrong_types(field: str, value: Any) -> None:
    fields = {"room": "r", field: value}
    assert paths({"actions": [{"conference": fields}]}) == [f"actions[0].conference.{field}"]
    assert paths({"actions": [{"type": "conference", **fields}]}) == [f"actions[0].{field}"]


def test_missing_room_both_forms() -> None:
    assert paths({"actions": [{"conference": {}}]}) == ["actions[0].conference.room"]
    assert paths({"actions": [{"type": "conference"}]}) == ["actions[0].room"]


def test_unknown_field_and_action() -> None:
    assert paths({"actions": [{"conference": {"room": "r", "recording": True}}]}) == [
        "actions[0].conference.recording"]
    assert paths({"actions": [{"conference": {"room": "r", "record": "yes"}}]}) == [
        "actions[0].conference.record"]
    assert paths({"actions": [{"type": "conference", "room": "r", "x": 1}]}) == ["actions[0].x"]
    assert paths({"actions": [{"dance": {}}]}) == ["actions[0].dance"]
    assert paths({"actions": [{"type": "dance"}]}) == ["actions[0].type"]
    assert paths({"actions": [{"type": 7}]}) == ["actions[0].type"]


def test_keyed_action_with_two_keys() -> None:
    assert paths({"actions": [{"conference": {"room": "r"}, "pause": {}}]}) == ["actions[0]"]
    assert paths({"actions": [{}]}) == ["actions[0]"]


def test_keyed_action_body_must_be_object() -> None:
    assert paths({"actions": [{"conference": "room-1"}]}) == ["actions[0].conference"]


def test_document_level_rules() -> None:
    assert paths([]) == [""]
    assert paths({}) == ["actions"]
    assert paths({"actions": "x"}) == ["actions"]
    assert paths({"actions": []}) == ["actions"]
    too_many: dict[str, list[dict[str, dict[str, object]]]] = {
        "actions": [{"pause": {}}] * (MAX_ACTIONS + 1)}
    assert paths(too_many) == ["actions"]
    assert len(parse_document({"actions": [{"pause": {}}] * MAX_ACTIONS})) == MAX_ACTIONS
    assert paths({"actions": [{"pause": {}}], "extra": 1}) == ["extra"]
    assert paths({"actions": ["conference"]}) == ["actions[0]"]


def test_all_errors_are_reported_at_once() -> None:
    doc = {"actions": [{"conference": {"room": "bad room", "x": 1}},
                       {"type": "conference", "mute": "no"}, {"pause": {"length": -1}}]}
    assert sorted(paths(doc)) == sorted([
        "actions[0].conference.x", "actions[0].conference.room", "actions[1].room",
        "actions[1].mute", "actions[2].pause.length"])


def test_raw_bodies() -> None:
    assert parse_body(b'{"actions":[{"conference":{"room":"r"}}]}') == (Conference("r"),)
    for body in (b"", b"{", b"\xff\xfe", b"null", b'"actions"'):
        with pytest.raises(ValidationError):
            parse_body(body)
    big = json.dumps({"actions": [{"pause": {}}], "p": "x" * 70000}).encode()
    with pytest.raises(ValidationError) as err:
        parse_body(big)
    assert "64" in err.value.details[0].reason or "65536" in err.value.details[0].reason


def test_pause_and_hangup_rules() -> None:
    assert paths({"actions": [{"pause": {"length": True}}]}) == ["actions[0].pause.length"]
    assert paths({"actions": [{"pause": {"length": 3601}}]}) == ["actions[0].pause.length"]
    assert paths({"actions": [{"hangup": {"reason": ""}}]}) == ["actions[0].hangup.reason"]
    assert parse_document({"actions": [{"hangup": {}}]}) == (Hangup(),)
