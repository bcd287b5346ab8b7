"""Gateway errors, each carrying its HTTP status and OpenAI error `code`.

    GatewayError
    ├── InvalidRequest          400 invalid_request
    ├── InvalidAPIKey           401 invalid_api_key
    ├── AdminAuthRequired       401 invalid_api_key   (admin token missing or wrong)
    ├── InsufficientCredits     402 insufficient_credits
    ├── BudgetExceeded          402 budget_exceeded
    ├── ModelNotAllowed         403 model_not_allowed
    ├── Forbidden               403 forbidden         (not allowed for this caller)
    ├── NotFound                404 not_found
    ├── Conflict                409 conflict
    ├── RequestTimeout          408 request_timeout   (the request took too long to arrive)
    ├── RequestTooLarge         413 request_too_large
    ├── RequestHeadTooLarge     431 request_header_too_large
    ├── RateLimitExceeded       429 rate_limit_exceeded  (+ Retry-After, x-ratelimit-*)
    ├── UpstreamUnavailable     502 upstream_unavailable
    ├── LimitsUnavailable       503 limits_unavailable   (Redis down, limits set to fail_closed)
    ├── UpstreamTimeout         504 upstream_timeout
    └── FrameworkHTTPError      any invalid_request / internal_error  (405 and kin)

Lower-layer errors (aiohttp, SQLAlchemy) are mapped to these at the boundary with
`raise X from exc`; one renderer turns any of them into the OpenAI error body.
"""

import orjson


class GatewayError(Exception):
    """Base of every error the gateway answers itself (as opposed to relaying upstream's)."""

    status: int = 500
    code: str = "internal_error"
    type: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or []

    def body(self) -> bytes:
        """The OpenAI-shaped JSON error body."""
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "code": self.code,
                    "param": self.param,
                }
            }
        )


class InvalidRequest(GatewayError):
    status = 400
    code = "invalid_request"
    type = "invalid_request_error"


class InvalidAPIKey(GatewayError):
    status = 401
    code = "invalid_api_key"
    type = "invalid_request_error"


class AdminAuthRequired(InvalidAPIKey):
    pass


class InsufficientCredits(GatewayError):
    status = 402
    code = "insufficient_credits"
    type = "insufficient_quota"


class BudgetExceeded(GatewayError):
    status = 402
    code = "budget_exceeded"
    type = "insufficient_quota"


class ModelNotAllowed(GatewayError):
    status = 403
    code = "model_not_allowed"
    type = "invalid_request_error"


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"
    type = "invalid_request_error"


class NotFound(GatewayError):
    status = 404
    code = "not_found"
    type = "invalid_request_error"


class ModelNotFound(GatewayError):
    status = 404
    code = "model_not_found"
    type = "invalid_request_error"


class Conflict(GatewayError):
    status = 409
    code = "conflict"
    type = "invalid_request_error"


class RequestTimeout(GatewayError):
    status = 408
    code = "request_timeout"
    type = "invalid_request_error"


class RequestTooLarge(GatewayError):
    status = 413
    code = "request_too_large"
    type = "invalid_request_error"


class RequestHeadTooLarge(GatewayError):
    status = 431
    code = "request_header_too_large"
    type = "invalid_request_error"


class RateLimitExceeded(GatewayError):
    status = 429
    code = "rate_limit_exceeded"
    type = "rate_limit_error"


class UpstreamUnavailable(GatewayError):
    status = 502
    code = "upstream_unavailable"
    type = "server_error"


class LimitsUnavailable(GatewayError):
    status = 503
    code = "limits_unavailable"
    type = "server_error"


class DatabaseUnavailable(GatewayError):
    status = 503
    code = "database_unavailable"
    type = "server_error"


class UpstreamTimeout(GatewayError):
    status = 504
    code = "upstream_timeout"
    type = "server_error"


class FrameworkHTTPError(GatewayError):
    """An HTTP error raised by the web framework itself (405, ...), keeping its status."""

    def __init__(
        self, status: int, message: str, *, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(message, headers=headers)
        client_error = status < 500
        self.status = status
        self.code = "invalid_request" if client_error else "internal_error"
        self.type = "invalid_request_error" if client_error else "server_error"
