"""Tests for sever_hook: a local HTTP server stands in for sever and checks the signature itself.

Run with: python3 -m unittest discover -s integrations/aws -v
"""

import base64
import hashlib
import hmac
import http.server
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
import unittest
from unittest import mock

import sever_hook

# The key is 24 random-looking bytes, base64-encoded, as sever requires (24 to 64 bytes).
SECRET = "whsec_" + base64.b64encode(bytes(range(7, 31))).decode("ascii")
ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:orders/app-AbCdEf"
TOKEN = "c5a6e6d1-6f5e-4b3a-9d2e-7c1b0a9f8e7d"


def reference_signature(secret, msg_id, timestamp, body):
    """Standard Webhooks, written out independently of sever_hook.sign."""
    key = base64.b64decode(secret.split("_", 1)[1])
    mac = hmac.new(key, b"%s.%s.%s" % (msg_id.encode(), timestamp.encode(), body), hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


class FakeSever(http.server.ThreadingHTTPServer):
    """Verifies each delivery like sever does and answers per path."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests = []
        self.release = threading.Event()  # lets the slow handler finish early

    @property
    def base(self):
        return "http://127.0.0.1:%d" % self.server_address[1]


class Handler(http.server.BaseHTTPRequestHandler):
    server: FakeSever

    def log_message(self, *args):  # keep test output clean
        pass

    def reply(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        msg_id = self.headers.get("webhook-id", "")
        timestamp = self.headers.get("webhook-timestamp", "")
        signature = self.headers.get("webhook-signature", "")
        expected = reference_signature(SECRET, msg_id, timestamp, body)
        valid = any(hmac.compare_digest(expected, s) for s in signature.split(" "))
        fresh = timestamp.isdigit() and abs(int(timestamp) - time.time()) <= 300
        self.server.requests.append({
            "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
            "valid": valid, "fresh": fresh,
        })
        path = self.path.split("?", 1)[0]
        if not msg_id or not timestamp or not signature:
            return self.reply(401, {"error": {"code": "missing_header", "message": "missing"}})
        if not valid:
            return self.reply(401, {"error": {"code": "invalid_signature",
                                              "message": "no signature matches"}})
        if not fresh:
            return self.reply(401, {"error": {"code": "timestamp_out_of_tolerance",
                                              "message": "too old"}})
        if path == "/replay":
            return self.reply(409, {"error": {"code": "replayed_delivery",
                                              "message": "this webhook-id was processed before"}})
        if path == "/conflict":
            return self.reply(409, {"error": {"code": "something_else", "message": "other"}})
        if path == "/fail":
            return self.reply(500, {"error": {"code": "internal", "message": "boom"}})
        if path == "/slow":
            self.server.release.wait(5)
            try:
                return self.reply(200, {"status": "completed"})
            except OSError:
                return None
        if path == "/incomplete":
            return self.reply(200, {"action_id": "act_2", "status": "incomplete", "targets": []})
        event = json.loads(body)
        if event["Step"] != "finishSecret":
            return self.reply(200, {"status": "acknowledged", "step": event["Step"]})
        return self.reply(200, {"action_id": "act_1", "status": "completed", "targets": []})


class SeverHookTest(unittest.TestCase):
    def setUp(self):
        self.server = FakeSever()
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        env = mock.patch.dict(os.environ, {}, clear=False)
        env.start()
        self.addCleanup(env.stop)
        for name in ("SEVER_URL", "SEVER_WEBHOOK_SECRET", "SEVER_CA_FILE"):
            os.environ.pop(name, None)

    def tearDown(self):
        self.server.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def notify(self, path="/v1/events/aws?wait=true", **kwargs):
        kwargs.setdefault("url", self.server.base + path)
        kwargs.setdefault("signing_secret", SECRET)
        return sever_hook.notify_sever(ARN, TOKEN, **kwargs)

    # --- the request ------------------------------------------------------------------------

    def test_signed_request_headers_and_body(self):
        with self.assertLogs("sever_hook", logging.INFO) as logs:
            result = self.notify()
        self.assertEqual(result, {"action_id": "act_1", "status": "completed", "targets": []})
        (req,) = self.server.requests
        self.assertTrue(req["valid"], "signature must verify with the recomputed HMAC")
        self.assertTrue(req["fresh"])
        self.assertEqual(req["path"], "/v1/events/aws?wait=true")
        self.assertEqual(req["body"],
                         b'{"SecretId":"%s","ClientRequestToken":"%s","Step":"finishSecret"}'
                         % (ARN.encode(), TOKEN.encode()))
        headers = req["headers"]
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(headers["content-length"], str(len(req["body"])))
        self.assertRegex(headers["webhook-id"], r"^sm_[0-9a-f]{32}$")
        self.assertRegex(headers["webhook-timestamp"], r"^[0-9]+$")
        self.assertRegex(headers["webhook-signature"], r"^v1,[A-Za-z0-9+/]{43}=$")
        self.assertIn("status=completed", "\n".join(logs.output))
        self.assertIn("action_id=act_1", "\n".join(logs.output))

    def test_webhook_id_is_deterministic(self):
        self.notify()
        self.notify()
        self.notify(path="/v1/events/aws")
        sever_hook.notify_sever(ARN, TOKEN, "setSecret", url=self.server.base + "/x",
                                signing_secret=SECRET)
        ids = [r["headers"]["webhook-id"] for r in self.server.requests]
        expected = "sm_" + hashlib.sha256(
            ("%s\n%s\nfinishSecret" % (ARN, TOKEN)).encode()).hexdigest()[:32]
        self.assertEqual(ids[:3], [expected] * 3)
        self.assertNotEqual(ids[3], expected, "another step is another delivery")
        self.assertEqual(sever_hook.webhook_id(ARN, TOKEN, "finishSecret"), expected)
        self.assertNotEqual(sever_hook.webhook_id(ARN, "other-token", "finishSecret"), expected)

    def test_other_steps_are_sent_and_acknowledged(self):
        result = sever_hook.notify_sever(ARN, TOKEN, "testSecret", url=self.server.base + "/x",
                                         signing_secret=SECRET)
        self.assertEqual(result["status"], "acknowledged")
        self.assertEqual(json.loads(self.server.requests[0]["body"])["Step"], "testSecret")

    def test_config_from_environment(self):
        os.environ["SEVER_URL"] = self.server.base + "/v1/events/aws?wait=true"
        os.environ["SEVER_WEBHOOK_SECRET"] = SECRET
        result = sever_hook.notify_sever(ARN, TOKEN)
        self.assertEqual(result["status"], "completed")
        self.assertTrue(self.server.requests[0]["valid"])

    # --- answers ----------------------------------------------------------------------------

    def test_replayed_delivery_is_success(self):
        with self.assertLogs("sever_hook", logging.INFO) as logs:
            result = self.notify(path="/replay", raise_on_error=True)
        self.assertEqual(result["error"]["code"], "replayed_delivery")
        self.assertTrue(all(r.startswith("INFO:") for r in logs.output), logs.output)
        self.assertIn("already processed", "\n".join(logs.output))

    def test_other_conflict_is_an_error(self):
        with self.assertLogs("sever_hook", logging.ERROR):
            self.assertIsNone(self.notify(path="/conflict"))

    def test_server_error_returns_none(self):
        with self.assertLogs("sever_hook", logging.ERROR) as logs:
            self.assertIsNone(self.notify(path="/fail"))
        text = "\n".join(logs.output)
        self.assertIn("HTTP 500", text)
        self.assertIn("internal: boom", text)

    def test_server_error_raises_with_raise_on_error(self):
        with self.assertLogs("sever_hook", logging.ERROR):
            with self.assertRaises(sever_hook.SeverHookError) as ctx:
                self.notify(path="/fail", raise_on_error=True)
        self.assertEqual(ctx.exception.status, 500)
        self.assertEqual(ctx.exception.code, "internal")
        self.assertEqual(ctx.exception.body["error"]["message"], "boom")

    def test_bad_signing_secret_is_rejected_by_server(self):
        other = "whsec_" + base64.b64encode(b"x" * 32).decode()
        with self.assertLogs("sever_hook", logging.ERROR) as logs:
            self.assertIsNone(self.notify(signing_secret=other))
        self.assertIn("invalid_signature", "\n".join(logs.output))
        self.assertFalse(self.server.requests[0]["valid"])

    def test_incomplete_is_returned_and_logged_as_warning(self):
        with self.assertLogs("sever_hook", logging.WARNING) as logs:
            result = self.notify(path="/incomplete")
        self.assertEqual(result["status"], "incomplete")
        self.assertIn("status=incomplete", "\n".join(logs.output))

    def test_timeout(self):
        started = time.monotonic()
        with self.assertLogs("sever_hook", logging.ERROR) as logs:
            self.assertIsNone(self.notify(path="/slow", timeout=0.3))
        self.assertLess(time.monotonic() - started, 3)
        self.assertIn("timed out", "\n".join(logs.output))
        with self.assertLogs("sever_hook", logging.ERROR):
            with self.assertRaises(sever_hook.SeverHookError) as ctx:
                self.notify(path="/slow", timeout=0.3, raise_on_error=True)
        self.assertIsNone(ctx.exception.status)

    def test_unreachable(self):
        # A port that was just free: connection refused.
        probe = FakeSever()
        port = probe.server_address[1]
        probe.server_close()
        with self.assertLogs("sever_hook", logging.ERROR) as logs:
            self.assertIsNone(sever_hook.notify_sever(
                ARN, TOKEN, url="http://127.0.0.1:%d/v1/events/aws" % port,
                signing_secret=SECRET, timeout=2))
        self.assertIn("unreachable", "\n".join(logs.output))

    # --- configuration ----------------------------------------------------------------------

    def test_missing_config(self):
        with self.assertLogs("sever_hook", logging.ERROR) as logs:
            self.assertIsNone(sever_hook.notify_sever(ARN, TOKEN))
        self.assertIn("SEVER_URL and SEVER_WEBHOOK_SECRET unset", "\n".join(logs.output))
        with self.assertLogs("sever_hook", logging.ERROR):
            with self.assertRaises(ValueError):
                sever_hook.notify_sever(ARN, TOKEN, url=self.server.base, raise_on_error=True)
        with self.assertLogs("sever_hook", logging.ERROR):
            with self.assertRaises(ValueError):
                sever_hook.notify_sever(ARN, TOKEN, signing_secret=SECRET, raise_on_error=True)
        self.assertEqual(self.server.requests, [])

    def test_invalid_config(self):
        for kwargs in ({"url": "file:///etc/passwd", "signing_secret": SECRET},
                       {"url": self.server.base, "signing_secret": "whsec_not base64!"}):
            with self.assertLogs("sever_hook", logging.ERROR) as logs:
                with self.assertRaises(ValueError):
                    sever_hook.notify_sever(ARN, TOKEN, raise_on_error=True, **kwargs)
            self.assertNotIn("not base64!", "\n".join(logs.output))
        self.assertEqual(self.server.requests, [])

    def test_secret_and_signature_never_logged(self):
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        log = logging.getLogger("sever_hook")
        log.addHandler(handler)
        old_level = log.level
        log.setLevel(logging.DEBUG)
        try:
            for path in ("/x", "/replay", "/fail", "/incomplete"):
                self.notify(path=path)
            self.notify(signing_secret="whsec_" + base64.b64encode(b"y" * 32).decode())
        finally:
            log.removeHandler(handler)
            log.setLevel(old_level)
        text = stream.getvalue()
        self.assertTrue(text)
        self.assertNotIn(SECRET, text)
        self.assertNotIn(SECRET[len("whsec_"):], text)
        for req in self.server.requests:
            self.assertNotIn(req["headers"]["webhook-signature"], text)
            self.assertNotIn(req["headers"]["webhook-signature"][3:], text)

    # --- the CLI ----------------------------------------------------------------------------

    def run_cli(self, *args, secret=SECRET):
        env = {k: v for k, v in os.environ.items()
               if k not in ("SEVER_URL", "SEVER_WEBHOOK_SECRET")}
        if secret is not None:
            env["SEVER_WEBHOOK_SECRET"] = secret
        return subprocess.run(
            [sys.executable, sever_hook.__file__, "--secret-id", ARN, "--token", TOKEN, *args],
            env=env, capture_output=True, text=True, timeout=30)

    def test_cli_success(self):
        proc = self.run_cli("--url", self.server.base + "/v1/events/aws?wait=true")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(json.loads(proc.stdout)["status"], "completed")
        self.assertIn("status=completed", proc.stderr)
        self.assertNotIn(SECRET, proc.stderr + proc.stdout)
        self.assertTrue(self.server.requests[0]["valid"])

    def test_cli_replay_exits_zero(self):
        proc = self.run_cli("--url", self.server.base + "/replay")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(json.loads(proc.stdout)["error"]["code"], "replayed_delivery")

    def test_cli_failure_exits_one(self):
        proc = self.run_cli("--url", self.server.base + "/fail")
        self.assertEqual(proc.returncode, 1)
        self.assertEqual(proc.stdout, "")
        self.assertIn("HTTP 500", proc.stderr)
        proc = self.run_cli("--url", self.server.base + "/fail", "--raise")
        self.assertEqual(proc.returncode, 1)
        self.assertIn("SeverHookError", proc.stderr)

    def test_cli_missing_secret_exits_one(self):
        proc = self.run_cli("--url", self.server.base + "/x", secret=None)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("SEVER_WEBHOOK_SECRET unset", proc.stderr)
        self.assertEqual(self.server.requests, [])

    def test_cli_has_no_secret_argument(self):
        proc = self.run_cli("--help")
        self.assertEqual(proc.returncode, 0)
        self.assertNotIn("--secret ", proc.stdout)
        self.assertNotIn("--signing-secret", proc.stdout)


class StandardWebhooksVectorTest(unittest.TestCase):
    # From the Standard Webhooks specification's reference implementation tests.
    VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    VECTOR_BODY = b'{"test": 2432232314}'
    VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

    def test_reference_vector(self):
        self.assertEqual(
            sever_hook.sign(self.VECTOR_SECRET, self.VECTOR_ID, 1614265330, self.VECTOR_BODY),
            self.VECTOR_SIGNATURE)

    def test_timestamp_as_string_is_the_same(self):
        self.assertEqual(
            sever_hook.sign(self.VECTOR_SECRET, self.VECTOR_ID, "1614265330", self.VECTOR_BODY),
            self.VECTOR_SIGNATURE)

    def test_matches_independent_implementation(self):
        body = b'{"SecretId":"s","ClientRequestToken":"t","Step":"finishSecret"}'
        self.assertEqual(sever_hook.sign(SECRET, "sm_1", "1700000000", body),
                         reference_signature(SECRET, "sm_1", "1700000000", body))


if __name__ == "__main__":
    unittest.main()
