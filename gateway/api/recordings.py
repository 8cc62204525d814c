"""Recordings: start and stop one of a room (/v1/conferences/{room}/recordings), and a
recording's metadata and audio (/v1/recordings/{recording_id})."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from gateway.api.core import ApiError, Route, empty_body, room_in_scope, visible
from gateway.keys import CALLS, RECORDINGS, STORE
from gateway.recordings import AlreadyRecording, RecordingRefused, public_view
from gateway.store import Recording

MAX_ID = 64  # a longer recording ID in the path is not looked up (ours are 26 characters)

# RecordingRefused's reasons as the API answers them (any other: 500 recording_failed).
REFUSED = {"disk_full": (507, "disk_full"), "limit": (429, "too_many_recordings"),
           "no_room": (404, "not_found")}


async def start_recording(request: web.Request) -> web.Response:
    empty_body(await request.read())
    room = room_in_scope(request)
    # Its events are signed for the application of the room's first participant.
    calls = request.app[CALLS]
    first = next((s for c in room.members if (s := calls.get(c)) is not None), None)
    if first is None:
        raise ApiError(404, "not_found", f"no room {room.key.name}")
    try:
        row = await request.app[RECORDINGS].start(room.key, first.app, by="api")
    except AlreadyRecording as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    except RecordingRefused as exc:
        status, code = REFUSED.get(exc.reason, (500, "recording_failed"))
        raise ApiError(status, code, str(exc)) from None
    return web.json_response(public_view(row), status=201)


def _recording(request: web.Request) -> Recording:
    rec_id = request.match_info["recording_id"]
    row = request.app[STORE].recording_get(rec_id) if len(rec_id) <= MAX_ID else None
    if row is None or not visible(request, row.customer_id):
        raise ApiError(404, "not_found", f"no recording {rec_id}")
    return row


async def stop_recording(request: web.Request) -> web.Response:
    recordings = request.app[RECORDINGS]
    row = _recording(request)
    name = request.match_info["room"]
    if row.room != name or row.status != "recording" or row.rec_id not in recordings.active:
        raise ApiError(404, "not_found", f"no recording {row.rec_id} in progress in room {name}")
    return web.json_response(public_view(await recordings.stop(row.rec_id, "api")))


async def get_recording(request: web.Request) -> web.Response:
    return web.json_response(public_view(_recording(request)))


async def recording_audio(request: web.Request) -> web.StreamResponse:
    row = _recording(request)
    if row.status != "completed":
        raise ApiError(409, "not_ready" if row.status == "recording" else "conflict",
                       f"recording {row.rec_id} is {row.status}")
    path = Path(row.path)
    if not path.is_file():
        raise ApiError(404, "not_found", f"the audio of {row.rec_id} is gone")
    # FileResponse answers Range requests (206, 416) and conditional ones itself.
    return web.FileResponse(path, headers={"Content-Type": "audio/wav"})


ROUTES = (
    Route("POST", "/v1/conferences/{room}/recordings", start_recording,
          "Start recording the room (201 with the recording)"),
    Route("DELETE", "/v1/conferences/{room}/recordings/{recording_id}", stop_recording,
          "Stop a recording of the room; the finished recording"),
    Route("GET", "/v1/recordings/{recording_id}", get_recording,
          "A recording's metadata: room, status, started_at, duration_s"),
    Route("GET", "/v1/recordings/{recording_id}/audio", recording_audio,
          "The recording as a WAV file (8 kHz mono 16-bit PCM); Range requests answered"),
)
