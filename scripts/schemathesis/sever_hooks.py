"""schemathesis hooks for scripts/schemathesis.sh: each route gets the credential it asks for.

The operator token on operator routes, the Alertmanager token on its route, the metrics token on `/metrics`, and a Standard
Webhooks signature over the exact bytes sent on the signed event routes (computed by a
requests auth callable, which runs after the body is serialized). Secrets come from the
environment the script sets; nothing here is a real credential.
"""

import base64
import hashlib
import hmac
import os
import time
import uuid

import schemathesis

SIGNED = ("/v1/events", "/v1/events/vault")


def _sign(request):
    """Adds webhook-id, webhook-timestamp and webhook-signature over `request.body`."""
    secret = os.environ["SEVER_WEBHOOK_SECRET"].removeprefix("whsec_")
    key = base64.b64decode(secret)
    body = request.body or b""
    if isinstance(body, str):
        body = body.encode()
    msg_id = f"msg_{uuid.uuid4().hex}"
    ts = str(int(time.time()))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    request.headers["webhook-id"] = msg_id
    request.headers["webhook-timestamp"] = ts
    request.headers["webhook-signature"] = "v1," + base64.b64encode(mac).decode()
    return request


@schemathesis.hook
def before_call(context, case, kwargs):
    path = case.operation.path
    headers = case.headers if case.headers is not None else {}
    if path in SIGNED:
        kwargs["auth"] = _sign
    elif path == "/v1/alerts/alertmanager":
        headers["Authorization"] = "Bearer " + os.environ["SEVER_ALERTMANAGER_TOKEN"]
    elif path == "/metrics":
        headers["Authorization"] = "Bearer " + os.environ["SEVER_METRICS_TOKEN"]
    elif path.startswith("/v1/"):
        headers["Authorization"] = "Bearer " + os.environ["SEVER_OPERATOR_TOKEN"]
    case.headers = headers
