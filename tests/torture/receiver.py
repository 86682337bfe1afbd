"""A webhook receiver of the run's own, down at random times.

It listens on one fixed loopback port (the daemon's config names it) and checks each delivery
the way a real receiver would: the `X-Certkeeper-Signature` HMAC-SHA256 of the body under the
shared secret, and `Idempotency-Key` equal to the event id. What it answered 200 to is
"delivered". A chaos thread switches it between four states:

- up: 200 at once;
- refusing: 503 (the daemon retries with backoff);
- closed: the listening socket is closed, so connections are refused;
- slow: 200 only after longer than the daemon's webhook timeout (the daemon gives up and
  sends the event again, so the receiver sees it twice: at least once, never lost).
"""

import hashlib
import hmac
import http.server
import json
import threading
import time

UP, REFUSING, CLOSED, SLOW = "up", "refusing", "closed", "slow"


class Receiver:
    def __init__(self, port, secret, slow_seconds):
        self.port, self.secret, self.slow_seconds = port, secret, slow_seconds
        self.url = f"http://127.0.0.1:{port}/hook"
        self.lock = threading.Lock()
        self.state = UP
        # event id -> {"count": deliveries answered 200, "body": sha256 of the first body}
        self.delivered = {}
        self.refused = 0
        self.problems = []  # bad signatures, wrong idempotency keys, a duplicate that differs
        self.transitions = {UP: 0, REFUSING: 0, CLOSED: 0, SLOW: 0}
        self._server = None
        self._open()

    # --- the listener ---------------------------------------------------------------------

    def _open(self):
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = receiver._receive(body, self.headers)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a daemon killed mid-request resets its connection: expected here

        for attempt in range(200):
            try:
                server = Server(("127.0.0.1", self.port), Handler)
                break
            except OSError:
                if attempt == 199:
                    raise
                time.sleep(0.05)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def _close(self):
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def _receive(self, body, headers):
        with self.lock:
            state = self.state
        if state in (REFUSING, CLOSED):
            with self.lock:
                self.refused += 1
            return 503
        if state == SLOW:
            time.sleep(self.slow_seconds)
        expected = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        try:
            event = json.loads(body)
        except ValueError:
            event = {}
        event_id = event.get("id", "")
        digest = hashlib.sha256(body).hexdigest()
        with self.lock:
            if not hmac.compare_digest(headers.get("x-certkeeper-signature", ""), expected):
                self.problems.append(f"event {event_id}: bad signature")
            if headers.get("idempotency-key") != event_id:
                self.problems.append(f"event {event_id}: Idempotency-Key {headers.get('idempotency-key')!r}")
            seen = self.delivered.setdefault(event_id, {"count": 0, "body": digest})
            if seen["body"] != digest:
                self.problems.append(f"event {event_id}: delivered again with another body")
            seen["count"] += 1
        return 200

    # --- states ---------------------------------------------------------------------------

    def set_state(self, state):
        with self.lock:
            previous, self.state = self.state, state
            self.transitions[state] += 1
        if state == CLOSED and previous != CLOSED:
            self._close()
        elif state != CLOSED and previous == CLOSED:
            self._open()

    def chaos(self, rng, stop):
        """Switches states at random (each held 0.3-6 s) until `stop` is set, then stays up."""
        while not stop.is_set():
            state = rng.choices([UP, REFUSING, CLOSED, SLOW], weights=[60, 15, 15, 10])[0]
            self.set_state(state)
            stop.wait(rng.uniform(0.3, 6.0))
        self.set_state(UP)

    def snapshot(self):
        """(ids delivered -> count, problems) as of now."""
        with self.lock:
            return {k: v["count"] for k, v in self.delivered.items()}, list(self.problems)
