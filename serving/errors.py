"""Errors in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, for every failure:
bad requests are 400s saying what to change, and an unexpected error is a logged 500 after which
the server keeps serving."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from shaderbay.errors import ModelError
from starlette.exceptions import HTTPException

from .worker import EngineFailed, ServerBusy

log = logging.getLogger("shaderbay.serve")

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = _TYPES.get(status, "rate_limit_error" if status == 429 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def as_api_error(exc: Exception) -> ApiError:
    """The answer to an exception raised while serving a request."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ModelError):  # the model refused the request: its prompt or options
        return ApiError(400, str(exc), getattr(exc, "param", None))
    if isinstance(exc, ServerBusy):
        return ApiError(429, str(exc), code="server_busy")
    if isinstance(exc, EngineFailed):  # logged by the worker, once for every request it failed
        return ApiError(500, f"internal error ({exc}); the server logged it")
    log.error("unexpected error while serving a request", exc_info=exc)
    return ApiError(500, f"internal error ({type(exc).__name__}: {exc}); the server logged it")


def _respond(exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.status, exc.message, exc.param, exc.code), status_code=exc.status)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if first.get("type") == "missing":
        return f"{param} is required", param
    text = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    if "input" in first and first.get("type") != "missing":
        text += f" (got {first['input']!r})"
    return text, param


def install(app: FastAPI) -> None:
    """Answer every failure in OpenAI's shape. Routes raise ApiError (see `as_api_error`); the handler
    for any other exception is a last resort (Starlette re-raises those after answering, to log them)."""

    @app.exception_handler(ApiError)
    async def refused(request: Request, exc: ApiError) -> JSONResponse:
        return _respond(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _respond(ApiError(400, message, param))

    @app.exception_handler(HTTPException)
    async def http(request: Request, exc: HTTPException) -> JSONResponse:
        return _respond(ApiError(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def any_error(request: Request, exc: Exception) -> JSONResponse:
        return _respond(as_api_error(exc))
