"""The playground's web app: one static page (static/) and a JSON API, on Starlette.

Each browser tab gets a session id (POST /api/session) and its own :class:`~manualbp.playground.lab.Lab`;
the page then sends that id with every call. Every parameter is checked (``lab.parse_config`` and
the helpers below): a bad one is answered with status 400 and ``{"error": message}``, which the page
shows; an unexpected failure with status 500 and a one-line message, never a traceback. The API
reads no file and runs no code the page sends: it only builds nets from checked settings.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from manualbp.errors import ManualbpError
from manualbp.playground.lab import MAX_STEPS_PER_CALL, Lab, ParameterError, json_safe, parse_config

STATIC = Path(__file__).parent / "static"
MAX_SESSIONS = 64  # the oldest unused tab's net is dropped beyond this
MAX_BODY_BYTES = 3_000_000
MAX_JSON_DEPTH = 32  # the page sends objects 3 levels deep
MAX_INTEGER_DIGITS = 20  # every whole number the API takes fits int64
STEPS_PER_CHUNK = 10  # a Play request's steps run in chunks, with a check between them that the tab is still there
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


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


class RequestTooLarge(ParameterError):
    """A request body over :data:`MAX_BODY_BYTES` (answered with status 413)."""


def _bounded_integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise ParameterError(f"the request has a whole number of {len(text.lstrip('-'))} digits; "
                             f"numbers here have at most {MAX_INTEGER_DIGITS}")
    return int(text)


STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')  # a JSON string, escapes included


def _json_depth(raw: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest (brackets inside strings do not count)."""
    codes = np.frombuffer(STRINGS.sub(b'""', raw), dtype=np.uint8)
    steps = np.isin(codes, (ord("["), ord("{"))).astype(np.int32) - np.isin(codes, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


async def _body(request: Request) -> dict:
    """The request's JSON object, read no further than :data:`MAX_BODY_BYTES` (a claimed Content-Length
    over it is refused before reading), nested at most :data:`MAX_JSON_DEPTH` deep."""
    too_large = f"request body larger than {MAX_BODY_BYTES} bytes; the page sends a few kB (a drawing ~30 kB)"
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        raise RequestTooLarge(too_large if length.isdigit() else f"Content-Length: expected bytes, got {length!r}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestTooLarge(too_large)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if _json_depth(raw) > MAX_JSON_DEPTH:
        raise ParameterError(f"the request's JSON nests deeper than {MAX_JSON_DEPTH} levels; the page sends 3")
    try:
        body = json.loads(raw or b"{}", parse_int=_bounded_integer)
    except ValueError:
        raise ParameterError("the request is not valid JSON") from None
    if not isinstance(body, dict):
        raise ParameterError("the request must be a JSON object")
    return body


def _is_own(host_header: str, names: tuple[str, ...], port: int) -> bool:
    """Whether a Host header (``name:port``, ``[v6]:port``) names this server: one of ``names``, or an IP
    address literal when the server listens on every address, at the server's port."""
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):(\d+)", host_header)
    if not match or int(match.group(2)) != port:
        return False
    name = match.group(1).strip("[]").lower()
    if name in names:
        return True
    if "0.0.0.0" in names or "::" in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True
    return False


class OwnOriginOnly:
    """ASGI middleware: refuses (403) a request whose Host or Origin is not this server's own address.

    Any web page the browser shows can send requests to 127.0.0.1: a cross-site form or ``text/plain``
    POST carries that page's Origin, and a DNS-rebinding page (its own domain name pointed at 127.0.0.1)
    carries its name in Host. Both are refused; a request without Origin (the address bar, curl) is not.
    """

    def __init__(self, app, names: tuple[str, ...]) -> None:
        self.app, self.names = app, tuple(name.strip("[]").lower() for name in names)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        port = (scope.get("server") or ("", 80))[1]
        host, origin = headers.get("host", ""), headers.get("origin")
        problem = None
        if not _is_own(host, self.names, port):
            problem = f"Host {host!r} is not this server's address"
        elif origin is not None and not (origin.startswith("http://") and _is_own(origin[7:], self.names, port)):
            problem = f"Origin {origin!r} is not this server's page"
        if problem is None:
            return await self.app(scope, receive, send)
        address = f"http://127.0.0.1:{port}/"
        await JSONResponse({"error": f"{problem}; open the playground at {address}"}, status_code=403)(
            scope, receive, send)


def create_app(digits=None, digits_error: str | None = None, hosts: tuple[str, ...] = LOCAL_HOSTS) -> OwnOriginOnly:
    """The app; ``digits``: a :class:`~manualbp.playground.digits.DigitLab` for the Draw a digit tab,
    or None (then ``digits_error`` says why, in the page); ``hosts``: the names this server answers to
    (with its own port), any other Host or Origin is refused with 403."""
    sessions = Sessions()

    def locked(lock: threading.Lock, work, *arguments):
        """``work(*arguments)`` under the tab's lock, in a worker thread: the event loop keeps serving others."""
        def run():
            with lock:
                return work(*arguments)

        return run_in_threadpool(run)

    def state_of(lab: Lab, body: dict) -> dict:
        return lab.state(point=_integer(body, "point", 0, len(lab.inputs) - 1, 0), selected=_selected(body))

    async def index(request: Request):
        return FileResponse(STATIC / "index.html")

    async def new_session(request: Request):
        body = await _body(request)
        config = parse_config(body.get("config", {}))
        lab = await run_in_threadpool(Lab, config)
        session = sessions.create(lab)
        return {"session": session, **await run_in_threadpool(lab.state)}

    async def configure(request: Request):
        body = await _body(request)
        lab, lock = sessions.get(body.get("session"))
        config = parse_config(body.get("config", {}))

        def rebuild():
            lab = Lab(config)
            sessions.replace(body["session"], lab)
            return lab.state()

        return await locked(lock, rebuild)

    async def step(request: Request):
        body = await _body(request)
        lab, lock = sessions.get(body.get("session"))
        count = _integer(body, "steps", 1, MAX_STEPS_PER_CALL, 1)
        done, record_every = 0, max(1, count // 20)
        while done < count:  # in chunks: a tab closed mid-Play stops costing the others
            chunk = min(STEPS_PER_CHUNK, count - done)
            await locked(lock, lab.step, chunk, record_every)
            done += chunk
            if done < count and await request.is_disconnected():
                return {"stopped": "the client went away"}
        return await locked(lock, lambda: state_of(lab, body))

    async def reset(request: Request):
        body = await _body(request)
        lab, lock = sessions.get(body.get("session"))

        def reset_and_state():
            lab.reset()
            return state_of(lab, body)

        return await locked(lock, reset_and_state)

    async def state(request: Request):
        body = await _body(request)
        lab, lock = sessions.get(body.get("session"))
        return await locked(lock, lambda: state_of(lab, body))

    async def node(request: Request):
        body = await _body(request)
        lab, lock = sessions.get(body.get("session"))
        name = body.get("node")

        def matrix():
            return {**lab.node_matrix(name if isinstance(name, str) else repr(name)), "weights": lab.weights(),
                    "points": lab.state()["points"], "targets": lab.targets.tolist()}

        return await locked(lock, matrix)

    async def digit_info(request: Request):
        if digits is None:
            return {"ready": False, "message": digits_error}
        return {"ready": True, **digits.describe()}

    async def digit(request: Request):
        body = await _body(request)
        if digits is None:
            raise ParameterError(digits_error or "no checkpoint loaded")
        return await run_in_threadpool(digits.analyse, body.get("image"), body.get("label"))

    def api(handler):
        async def endpoint(request: Request):
            try:
                result = await handler(request)
            except ParameterError as error:
                status = 413 if isinstance(error, RequestTooLarge) else 400
                return JSONResponse({"error": str(error)}, status_code=status)
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
    return OwnOriginOnly(Starlette(routes=routes), hosts)
