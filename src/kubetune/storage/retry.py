"""Ride out an S3 outage: retry a whole multi-request operation with bounded exponential back-off.

botocore already retries each request (`standard` mode, `AWS_MAX_ATTEMPTS` tries, default 5), which
covers a dropped connection or a throttled request. It gives up within seconds, though, and an endpoint
that is down for a minute (MinIO restarting, a load balancer failing over) refuses every one of them.
`retry_through_outage` wraps an operation that is safe to start again (an upload that skips what is
already there) and retries it on transient errors only, until a time budget is spent.

The budget is `KUBETUNE_S3_RETRY_SECONDS` (default 300 s) unless the caller passes one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_SECONDS_VAR = "KUBETUNE_S3_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 300.0
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 30.0

# Server-side codes that mean "try again later", not "you asked for something wrong".
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling",
                    "ThrottlingException", "RequestTimeTooSkewed", "500", "502", "503", "504"}


class TransientStoreError(Exception):
    """The store answered but lost or lacks what was just written (e.g. it restarted): worth another attempt."""


def retry_budget_s(budget_s: float | None = None) -> float:
    """The outage budget in seconds: `budget_s` if given, else `KUBETUNE_S3_RETRY_SECONDS`, else 300.

    Raises:
        ValueError: `KUBETUNE_S3_RETRY_SECONDS` is not a number ≥ 0.
    """
    if budget_s is not None:
        return float(budget_s)
    text = os.environ.get(RETRY_SECONDS_VAR, "").strip()
    if not text:
        return DEFAULT_RETRY_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise ValueError(f"{RETRY_SECONDS_VAR}={text!r} is not a number of seconds ≥ 0: set it to e.g. 300, "
                         "or unset it")
    return value


def is_transient(err: BaseException) -> bool:
    """Whether `err` is an outage (connection refused, reset, timed out; a 5xx; a store that lost writes).

    Errors the request itself caused (no such bucket, access denied, a bad key) are not: retrying cannot help.
    """
    if isinstance(err, ConnectionError | HTTPClientError | TransientStoreError):
        return True
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return code in _TRANSIENT_CODES or status >= 500
    if isinstance(err, S3UploadFailedError):
        # boto3 flattens the ClientError of an upload into this message-only error ("... (SlowDown) ...")
        cause = err.__cause__ or err.__context__
        if cause is not None and cause is not err:
            return is_transient(cause)
        return any(f"({code})" in str(err) for code in _TRANSIENT_CODES)
    return False


def retry_through_outage(action: Callable[[], T], *, what: str, budget_s: float,
                         on_give_up: Callable[[BaseException, float, int], Exception],
                         sleep: Callable[[float], None] = time.sleep) -> T:
    """Run `action` until it succeeds, retrying transient failures with exponential back-off within `budget_s`.

    Args:
        action (`Callable[[], T]`):
            The whole operation; it must be safe to run again after a failure part-way.
        what (`str`):
            What is being done, for the log lines (e.g. `"upload of /out/merged to s3://b/m/"`).
        budget_s (`float`):
            Seconds since the first failure after which no further attempt starts (0: one attempt only).
        on_give_up (`Callable[[BaseException, float, int], Exception]`):
            Builds the error raised when the budget is spent, from the last error, the seconds spent and
            the number of attempts; it should say what is kept locally.
        sleep (`Callable[[float], None]`, *optional*, defaults to `time.sleep`):
            How to wait between attempts.

    Returns:
        `T`: what `action` returned.
    """
    first_failure: float | None = None
    delay = FIRST_DELAY_S
    attempt = 0
    while True:
        attempt += 1
        try:
            result = action()
        except Exception as err:
            if not is_transient(err):
                raise
            now = time.monotonic()
            first_failure = now if first_failure is None else first_failure
            spent = now - first_failure
            if spent >= budget_s:
                raise on_give_up(err, spent, attempt) from err
            wait = min(delay, budget_s - spent)  # the last attempt starts when the budget ends
            logger.warning("S3 outage during %s (attempt %d: %s); retrying in %.1f s (gives up after %.0f s)",
                           what, attempt, _first_line(err), wait, budget_s)
            sleep(wait)
            delay = min(delay * 2, MAX_DELAY_S)
            continue
        if attempt > 1 and first_failure is not None:
            logger.warning("S3 is back: %s completed on attempt %d, %.1f s after the first failure", what, attempt,
                           time.monotonic() - first_failure)
        return result


def _first_line(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:300]
