"""The playground's web app: one static page (static/) and a JSON API, on Starlette.

Each browser tab gets a session id (POST /api/session) and its own :class:`~manualbp.playground.lab.Lab`;
the page then sends that id with every call. Every parameter is checked (``lab.parse_config`` and
the helpers below): a bad one is answered with status 400 and ``{"error": message}``, which the page
shows; an unexpected failure with status 500 and a one-line message, never a traceback. The API
reads no file and runs no code the page sends: it only builds nets from checked settings.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import OrderedDict
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from manualbp.errors import ManualbpError
from manualbp.playground.lab import MAX_STEPS_PER_CALL, Lab, ParameterError, json_safe, parse_config

STATIC = Path(__file__).parent / "static"
MAX_SESSIONS = 64  # the oldest unused tab's net is dropped beyond this
MAX_BODY_BYTES = 3_000_000


class Sessions:
    """The tabs' labs by session id, the least recently used dropped first, one lock per tab."""

    def __init__(self, limit: int = MAX_SESSIONS) -> None:
        self.limit = limit
        self.labs: OrderedDict[str, tuple[Lab, threading.Lock]] = OrderedDict()
        self.lock = threading.Lock()

    def create(self, lab: Lab) -> str:
        session = secrets.token_hex(8)
        with self.lock:
            self.labs[session] = (lab, threading.Lock())
            while len(self.labs) > self.limit:
                self.labs.popitem(last=False)
        return session

    def get(self, session) -> tuple[Lab, threading.Lock]:
        with self.lock:
            if not isinstance(session, str) or session not in self.labs:
                raise ParameterError("session: unknown or expired session; reload the page to start a new one")
            self.labs.move_to_end(session)
            return self.labs[session]

    def replace(self, session: str, lab: Lab) -> None:
        with self.lock:  # (a tab dropped meanwhile by the limit comes back with its new net)
            self.labs[session] = (lab, self.labs[session][1] if session in self.labs else threading.Lock())


def _integer(body: dict, name: str, low: int, high: int, default: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ParameterError(f"{name}: expected a whole number from {low} to {high}, got {value!r}")
    return value


def _selected(body: dict):
    selected = body.get("selected")
    if selected is not None and not isinstance(selected, str):
        raise ParameterError(f"selected: expected a node name, got {selected!r}")
    return selected


async def _body(request: Request) -> dict:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ParameterError(f"request larger than {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise ParameterError("the request is not valid JSON") from None
    if not isinstance(body, dict):
        raise ParameterError("the request must be a JSON object")
    return body


def create_app(digits=None, digits_error: str | None = None) -> Starlette:
    """The app; ``digits``: a :class:`~manualbp.playground.digits.DigitLab` for the Draw a digit tab,
    or None (then ``digits_error`` says why, in the page)."""
    sessions = Sessions()

    def state_of(lab: Lab, body: dict) -> dict:
        return lab.state(point=_integer(body, "point", 0, len(lab.inputs) - 1, 0), selected=_selected(body))

    async def index(request: Request):
        return FileResponse(STATIC / "index.html")

    async def new_session(request: Request):
        body = await _body(request)
        lab = Lab(parse_config(body.get("config", {})))
        session = sessions.create(lab)
        return {"session": session, **lab.state()}

    async def configure(request: Request):
        body = await _body(request)
        lab, lock = sessions.get(body.get("session"))
        config = parse_config(body.get("config", {}))
        with lock:
            lab = Lab(config)
            sessions.replace(body["session"], lab)
            return lab.state()

    async def step(request: Request):
        body = await _body(request)
        lab, lock = sessions.get(body.get("session"))
        count = _integer(body, "steps", 1, MAX_STEPS_PER_CALL, 1)
        with lock:
            lab.step(count)
            return state_of(lab, body)

    async def reset(request: Request):
        body = await _body(request)
        lab, lock = sessions.get(body.get("session"))
        with lock:
            lab.reset()
            return state_of(lab, body)

    async def state(request: Request):
        body = await _body(request)
        lab, lock = sessions.get(body.get("session"))
        with lock:
            return state_of(lab, body)

    async def node(request: Request):
        body = await _body(request)
        lab, lock = sessions.get(body.get("session"))
        with lock:
            name = body.get("node")
            return {**lab.node_matrix(name if isinstance(name, str) else repr(name)), "weights": lab.weights(),
                    "points": lab.state()["points"], "targets": lab.targets.tolist()}

    async def digit_info(request: Request):
        if digits is None:
            return {"ready": False, "message": digits_error}
        return {"ready": True, **digits.describe()}

    async def digit(request: Request):
        body = await _body(request)
        if digits is None:
            raise ParameterError(digits_error or "no checkpoint loaded")
        return digits.analyse(body.get("image"), body.get("label"))

    def api(handler):
        async def endpoint(request: Request):
            try:
                result = await handler(request)
            except ParameterError as error:
                return JSONResponse({"error": str(error)}, status_code=400)
            except ManualbpError as error:
                return JSONResponse({"error": str(error)}, status_code=400)
            except Exception as error:  # noqa: BLE001 -- a message for the page, never a traceback
                return JSONResponse({"error": f"internal error ({type(error).__name__}): {error}"}, status_code=500)
            return JSONResponse(json_safe(result))  # NaN and ±inf (a diverged net) as null

        return endpoint

    routes = [
        Route("/", index),
        Route("/api/session", api(new_session), methods=["POST"]),
        Route("/api/config", api(configure), methods=["POST"]),
        Route("/api/step", api(step), methods=["POST"]),
        Route("/api/reset", api(reset), methods=["POST"]),
        Route("/api/state", api(state), methods=["POST"]),
        Route("/api/node", api(node), methods=["POST"]),
        Route("/api/digit", api(digit), methods=["POST"]),
        Route("/api/digit/info", api(digit_info), methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes)
