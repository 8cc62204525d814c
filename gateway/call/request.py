"""`POST /v1/calls`: the request body, checked before anything is dialled. Pure.

    {"to": "sip:bob@example.com" | "bob", "from": "+15551230001", "application_id": "app_1",
     "answer_url": "https://..." | "actions": [...], "timeout": 30}

Every problem is reported at once as (path, reason) pairs, like an actions document's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.actions.base import Action
from gateway.actions.schema import parse_document
from gateway.config import Application
from gateway.strict import Detail, ValidationError

FIELDS = {"to", "from", "application_id", "answer_url", "actions", "timeout"}
_TARGET = re.compile(r"(sips?:[^\s<>\"]{1,250}@[^\s<>\"]{1,250})|([A-Za-z0-9._+-]{1,64})")
_CALLER = re.compile(r"[A-Za-z0-9.+_-]{1,64}")
_URL = re.compile(r"https?://\S{1,2040}")
_APP = re.compile(r".{1,64}", re.S)


@dataclass(frozen=True)
class CallRequest:
    to: str
    from_user: str
    application_id: str | None
    answer_url: str | None
    actions: tuple[Action, ...] | None
    timeout: float

    @property
    def registered_user(self) -> bool:
        return not self.to.startswith(("sip:", "sips:"))


def parse_call_request(body: Any) -> CallRequest:
    """The request, or ValidationError with every problem."""
    if not isinstance(body, dict):
        raise ValidationError([Detail("", "must be a JSON object")], "invalid request")
    errors = [Detail(k, "unknown field") for k in sorted(set(body) - FIELDS, key=str)]
    to = body.get("to")
    if to is None:
        errors.append(Detail("to", "is required"))
    elif not isinstance(to, str) or not _TARGET.fullmatch(to):
        errors.append(Detail("to", "must be a SIP URI (sip:user@host) or a registered user "
                                   "name"))
    caller = body.get("from")
    if caller is None:
        errors.append(Detail("from", "is required"))
    elif not isinstance(caller, str) or not _CALLER.fullmatch(caller):
        errors.append(Detail("from", "must be a number or user name (1-64 of A-Z a-z 0-9 . + "
                                     "_ -)"))
    app_id = body.get("application_id")
    if app_id is not None and (not isinstance(app_id, str) or not _APP.fullmatch(app_id)):
        errors.append(Detail("application_id", "must be a string of 1 to 64 characters"))
    url = body.get("answer_url")
    if url is not None and (not isinstance(url, str) or not _URL.fullmatch(url)):
        errors.append(Detail("answer_url", "must be an http:// or https:// URL (at most 2048 "
                                           "characters)"))
    actions: tuple[Action, ...] | None = None
    if "actions" in body:
        try:
            actions = parse_document({"actions": body["actions"]})
        except ValidationError as exc:
            errors.extend(exc.details)
    if (url is None) == ("actions" not in body):
        errors.append(Detail("", "give exactly one of answer_url and actions"))
    timeout = body.get("timeout", 30)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        errors.append(Detail("timeout", "must be a number"))
    elif not 1 <= timeout <= 600:
        errors.append(Detail("timeout", "must be 1 to 600"))
    if errors:
        raise ValidationError(errors, "invalid request")
    return CallRequest(to=str(to), from_user=str(caller), application_id=app_id,
                       answer_url=url, actions=actions, timeout=float(timeout))


def caller_id_allowed(app: Application, caller: str) -> bool:
    """Whether `app` may place calls from `caller`: an exact entry of its `caller_ids`, or an
    entry ending in `*` that `caller` starts with (`+1555*`). None configured: none allowed."""
    return any(caller == c or (c.endswith("*") and caller.startswith(c[:-1]))
               for c in app.caller_ids)


def choose_application(apps: Iterable[Application], wanted: str | None,
                       customer_id: str | None) -> Application | None:
    """The application a call is placed for: `wanted` if it is one of the caller's customer
    (any, for an admin), else the customer's first application (an admin must name one)."""
    for app in apps:
        if customer_id is not None and app.customer_id != customer_id:
            continue
        if wanted is None and customer_id is None:
            return None
        if wanted is None or app.id == wanted:
            return app
    return None
