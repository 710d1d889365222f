"""An httpx client for the tests' raw calls to a Prefect server, retrying what Prefect's own
client retries: a 503 is the server's answer to a retryable error (a busy SQLite database on a
loaded machine: ``prefect.server.api.server.custom_internal_exception_handler``)."""

from __future__ import annotations

import time

import httpx

RETRIES = 6


class _RetryUnavailable(httpx.HTTPTransport):
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(RETRIES):
            response = super().handle_request(request)
            if response.status_code != 503 or attempt == RETRIES - 1:
                return response
            response.close()
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")


def prefect_client(stack) -> httpx.Client:
    """``stack``'s Prefect API, authenticated, retrying 503s (the request bodies here are bytes,
    so they can be sent again)."""
    return httpx.Client(base_url=stack.prefect_api, timeout=30, auth=httpx.BasicAuth(*stack.api_auth),
                        transport=_RetryUnavailable())
