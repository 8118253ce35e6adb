"""Every error the server answers with, in OpenAI's JSON shape and with the right status.

``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`` is what the ``openai``
client turns into ``BadRequestError``, ``AuthenticationError``, ``NotFoundError`` and so on, so
a client written for OpenAI or OVMS reports nbkit's errors the same way.
"""

from __future__ import annotations

from starlette.responses import JSONResponse


class APIError(Exception):
    """An answer other than 200: status, one sentence, and OpenAI's type and code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unknown_model(name: str, served: str) -> APIError:
    return APIError(
        404,
        f"The model {name!r} does not exist on this server; it serves {served!r} (see GET /v3/models).",
        code="model_not_found",
        param="model",
    )


def overloaded(waiting: int, retry_after_s: int) -> APIError:
    return APIError(
        503,
        f"The server is busy: {waiting} requests are already waiting; retry in {retry_after_s} s.",
        type="server_error",
        code="server_overloaded",
        headers={"Retry-After": str(retry_after_s)},
    )
