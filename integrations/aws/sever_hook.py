"""Tell sever that an AWS Secrets Manager rotation finished, from inside the rotation Lambda.

Drop this file next to the ``lambda_function.py`` of one of AWS's rotation templates (for
example SecretsManagerRDSPostgreSQLRotationSingleUser) and call it at the very end of
``finish_secret(...)``, after ``update_secret_version_stage`` has moved ``AWSCURRENT`` to the
new version::

    import sever_hook

    def finish_secret(service_client, arn, token):
        ...
        service_client.update_secret_version_stage(SecretId=arn, VersionStage="AWSCURRENT",
                                                    MoveToVersionId=token,
                                                    RemoveFromVersionId=current_version)
        logger.info("finishSecret: Successfully set AWSCURRENT stage to version %s for secret %s."
                    % (token, arn))
        sever_hook.notify_sever(arn, token)

sever then terminates the database sessions that were opened with the old password.

Configuration comes from the environment unless passed explicitly:

``SEVER_URL``
    The full endpoint, e.g. ``https://sever.internal:8443/v1/events/aws?wait=true``.
``SEVER_WEBHOOK_SECRET``
    The Standard Webhooks signing secret, ``whsec_<base64>`` (one of sever's
    ``[webhooks] secrets``).
``SEVER_CA_FILE`` (optional)
    A PEM bundle to verify sever's TLS certificate with, for a private CA.

The request is the rotation event itself, ``{"SecretId", "ClientRequestToken", "Step"}``,
signed with Standard Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``).
The ``webhook-id`` is derived from (secret, token, step), so a repeated call for the same
rotation is recognised by sever as a replay (HTTP 409 ``replayed_delivery``), which this
module reports as "already processed", not as a failure.

Why failures are logged rather than raised by default: AWS's templates return early (in
``lambda_handler`` and in ``finish_secret``) when the new version already is ``AWSCURRENT``,
so when Secrets Manager retries ``finishSecret`` the hook is *not* called again. Raising
from the hook would fail the rotation step without giving sever a second chance. Deploy the
EventBridge rule (``cloudformation/sever-events.yaml``) as the backstop: it reports the same
rotation, and sever acts once per (secret, version). Pass ``raise_on_error=True`` if you
prefer the rotation step to fail loudly.

Only the Python standard library is used (Python 3.9+). The signing secret and the signature
are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException

__all__ = ["notify_sever", "sign", "webhook_id", "SeverHookError"]

logger = logging.getLogger("sever_hook")

_USER_AGENT = "sever-hook/1"
_MAX_RESPONSE_BYTES = 1024 * 1024


class SeverHookError(Exception):
    """sever could not be notified (HTTP error, unreachable, timeout).

    ``status`` is the HTTP status (None when no response arrived), ``code`` sever's error
    code when it sent one, and ``body`` the parsed JSON error body when there was one.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.body = body


def sign(secret: str, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """Returns the Standard Webhooks signature header value ``v1,<base64>``.

    ``secret`` is ``whsec_<base64 key>``; the HMAC-SHA256 key is the decoded part. The signed
    content is ``f"{msg_id}.{timestamp}."`` followed by the exact body bytes.
    """
    encoded = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    try:
        key = base64.b64decode(encoded, validate=True)
    except ValueError:
        # Never echo the secret in the message.
        raise ValueError("signing secret is not whsec_<base64>") from None
    if not key:
        raise ValueError("signing secret is empty")
    content = f"{msg_id}.{timestamp}.".encode("utf-8") + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def webhook_id(secret_id: str, token: str, step: str) -> str:
    """The delivery id: the same for every call about the same (secret, version, step)."""
    material = f"{secret_id}\n{token}\n{step}".encode("utf-8")
    return "sm_" + hashlib.sha256(material).hexdigest()[:32]


def _safe_url(url: str) -> str:
    """The URL without user info, query or fragment, for logs."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "<unparseable url>"


def _parse_json(raw: bytes) -> dict | None:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _error_code(body: dict | None) -> str | None:
    if body and isinstance(body.get("error"), dict):
        code = body["error"].get("code")
        return code if isinstance(code, str) else None
    return None


def _error_message(body: dict | None) -> str | None:
    if body and isinstance(body.get("error"), dict):
        message = body["error"].get("message")
        return message if isinstance(message, str) else None
    return None


def _fail(raise_on_error: bool, message: str, *, status: int | None = None,
          code: str | None = None, body: dict | None = None) -> None:
    logger.error(message)
    if raise_on_error:
        raise SeverHookError(message, status=status, code=code, body=body)
    return None


def _ssl_context() -> ssl.SSLContext | None:
    cafile = os.environ.get("SEVER_CA_FILE")
    if not cafile:
        return None
    return ssl.create_default_context(cafile=cafile)


def notify_sever(secret_id: str, token: str, step: str = "finishSecret", *,
                 url: str | None = None, signing_secret: str | None = None,
                 timeout: float = 10.0, raise_on_error: bool = False) -> dict | None:
    """Reports a rotation step to sever and returns sever's JSON answer.

    Returns the parsed response on 2xx, and the parsed body on 409 ``replayed_delivery``
    (sever already processed this exact call). Otherwise logs an error and returns None, or,
    with ``raise_on_error``, raises ``ValueError`` for missing or invalid configuration and
    ``SeverHookError`` for anything that went wrong on the way to or inside sever.
    """
    url = url if url is not None else os.environ.get("SEVER_URL", "")
    signing_secret = (signing_secret if signing_secret is not None
                      else os.environ.get("SEVER_WEBHOOK_SECRET", ""))

    missing = [name for name, value in (("SEVER_URL", url),
                                        ("SEVER_WEBHOOK_SECRET", signing_secret)) if not value]
    problem = None
    if missing:
        problem = "sever hook not configured: %s unset" % " and ".join(missing)
    elif urllib.parse.urlsplit(url).scheme not in ("https", "http"):
        problem = "sever hook not configured: the URL (SEVER_URL) must be https://"
    if problem is None:
        body = json.dumps({"SecretId": secret_id, "ClientRequestToken": token, "Step": step},
                          separators=(",", ":")).encode("utf-8")
        msg_id = webhook_id(secret_id, token, step)
        timestamp = str(int(time.time()))
        try:
            signature = sign(signing_secret, msg_id, timestamp, body)
        except ValueError as e:
            problem = "sever hook not configured: %s" % e
    if problem is None:
        try:
            context = _ssl_context()
        except OSError as e:  # includes ssl.SSLError
            problem = "sever hook not configured: SEVER_CA_FILE unusable: %s" % (
                e.strerror or e.__class__.__name__)
    if problem is not None:
        logger.error(problem)
        if raise_on_error:
            raise ValueError(problem)
        return None

    target = _safe_url(url)
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": _USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": signature,
    })
    what = "secret %s version %s step %s" % (secret_id, token, step)

    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            status = response.status
            raw = response.read(_MAX_RESPONSE_BYTES)
    except urllib.error.HTTPError as e:
        status = e.code
        try:
            raw = e.read(_MAX_RESPONSE_BYTES)
        except (OSError, HTTPException):
            raw = b""
        finally:
            e.close()
        parsed = _parse_json(raw)
        code = _error_code(parsed)
        if status == 409 and code == "replayed_delivery":
            logger.info("sever already processed %s (webhook-id %s, HTTP 409 replayed_delivery)",
                        what, msg_id)
            return parsed
        detail = code or "no error code"
        message = _error_message(parsed)
        if message:
            detail = "%s: %s" % (detail, message)
        return _fail(raise_on_error, "sever rejected %s at %s: HTTP %d (%s)"
                     % (what, target, status, detail), status=status, code=code, body=parsed)
    except urllib.error.URLError as e:
        reason = ("timed out after %ss" % timeout if isinstance(e.reason, socket.timeout)
                  else "unreachable: %s" % (e.reason,))
        return _fail(raise_on_error, "sever request to %s for %s %s" % (target, what, reason))
    except socket.timeout:
        # Raised while reading the response (socket.timeout is TimeoutError on 3.10+).
        return _fail(raise_on_error, "sever request to %s for %s timed out after %ss"
                     % (target, what, timeout))
    except (OSError, HTTPException) as e:
        return _fail(raise_on_error, "sever request to %s for %s failed: %s"
                     % (target, what, e.__class__.__name__ + (": %s" % e if str(e) else "")))

    parsed = _parse_json(raw)
    if parsed is None:
        logger.warning("sever answered HTTP %d for %s, but not with a JSON object", status, what)
        return {}
    outcome = parsed.get("status")
    log = logger.warning if outcome == "incomplete" else logger.info
    log("sever answered HTTP %d for %s: status=%s action_id=%s", status, what, outcome,
        parsed.get("action_id"))
    return parsed


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python3 sever_hook.py --secret-id ID --token TOKEN [--step S] [--url U]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="sever_hook.py",
        description="Report a Secrets Manager rotation step to sever. The signing secret is read "
                    "from the environment variable SEVER_WEBHOOK_SECRET only (never an "
                    "argument: argv is visible to other users in ps).")
    parser.add_argument("--secret-id", required=True, help="secret ARN (or name)")
    parser.add_argument("--token", required=True,
                        help="ClientRequestToken: the version id of the new secret version")
    parser.add_argument("--step", default="finishSecret",
                        help="rotation step (default: finishSecret; others are acknowledged)")
    parser.add_argument("--url", default=None, help="sever endpoint (default: $SEVER_URL)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for sever (default: 10)")
    parser.add_argument("--raise", dest="raise_on_error", action="store_true",
                        help="raise on failure (traceback) instead of only logging it")
    args = parser.parse_args(argv)

    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = notify_sever(args.secret_id, args.token, args.step, url=args.url,
                          timeout=args.timeout, raise_on_error=args.raise_on_error)
    if result is None:
        return 1
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
