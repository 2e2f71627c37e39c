"""The API's answers: JSON that always encodes, and every error in one shape, ``{"error": "..."}`` with a 4xx
status, whatever raised it (our checks, the canvas reader, pydantic, FastAPI and Starlette themselves)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import LayerComposerError
from .guard import BodyTooLarge
from .jobs import QueueFull


class SafeJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: a string that is not valid Unicode can never make the
    encoding of an answer fail (inputs refuse them; this is the net under that)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def first_error(errors: Any) -> str:
    """One line from pydantic's error list: "settings.steps: Input should be greater than or equal to 1"."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return f"{where or 'request'}: {first.get('msg')}"


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error raised under `app` as ``{"error": ...}``."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return SafeJSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return SafeJSONResponse({"error": str(exc)}, status_code=429, headers={"Retry-After": "5"})

    @app.exception_handler(LayerComposerError)
    async def _bad_input(request: Request, exc: LayerComposerError) -> JSONResponse:
        return SafeJSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return SafeJSONResponse({"error": first_error(exc.errors())}, status_code=422)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return SafeJSONResponse({"error": str(exc)}, status_code=413)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """FastAPI's and Starlette's own errors (unknown route, wrong method, an unreadable body) in our shape."""
        if isinstance(exc.__cause__, BodyTooLarge):
            return SafeJSONResponse({"error": str(exc.__cause__)}, status_code=413)
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=exc.headers)
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail, ensure_ascii=True)
        if isinstance(exc.__cause__, RecursionError):
            message = "request: JSON nested too deeply"
        return SafeJSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)
