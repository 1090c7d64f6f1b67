"""The /v1 API's errors: `{"error": {"message", "type", "param", "code"}}` with DeepSeek's status codes.

400 bad body · 401 bad key · 402 quota spent · 422 bad parameter · 429 too many · 500 our fault ·
503 no worker for the model. Never a Django HTML page.
"""
from __future__ import annotations

import json
from typing import Any

from django.http import HttpResponse

from chat.core.errors import ChatError

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}

# ChatError codes from the shared actions, by the status they answer with on the API.
_CHAT_ERROR_STATUS = {
    "prompt_too_long": 400, "content_filter": 400, "invalid_content": 400, "empty_message": 400,
    "invalid_image_url": 400, "too_large": 413, "too_many_attachments": 400, "vision_unsupported": 400,
    "remote_images_disabled": 400, "unknown_model": 400,
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.retry_after = status, message, code, param, retry_after

    @classmethod
    def from_chat_error(cls, exc: ChatError, param: str | None = None) -> ApiError:
        # Image and content problems are the request's: 400 unless the table says otherwise.
        return cls(_CHAT_ERROR_STATUS.get(exc.code, 400), exc.message, exc.code, param)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "api_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> HttpResponse:
        response = HttpResponse(json.dumps(self.body(), ensure_ascii=False), status=self.status,
                                content_type="application/json")
        if self.retry_after is not None:
            response["Retry-After"] = str(self.retry_after)
        if self.status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="deepseek-web"'
        return response
