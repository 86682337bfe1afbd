"""The daemon's HTTP/JSON API on its Unix socket, with the standard library only.

One connection per call (`connection: close`), so a call never reuses a socket that a killed
daemon left half-open. A call that gets no complete answer raises `Unreachable`: for the
workload that is an outcome-unknown request (sent, maybe committed, never acknowledged).
"""

import http.client
import json
import socket


class Unreachable(Exception):
    """No complete answer: the daemon was down, or died before it answered."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("certkeeper", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def call(socket_path, method, path, body=None, timeout=60):
    """(status, parsed JSON body or text) of one request; raises `Unreachable`."""
    conn = _UnixConnection(socket_path, timeout)
    data = None if body is None else json.dumps(body).encode()
    headers = {"connection": "close"}
    if data is not None:
        headers["content-type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    except (OSError, http.client.HTTPException) as err:
        raise Unreachable(f"{method} {path}: {err}") from err
    finally:
        conn.close()
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        value = raw.decode(errors="replace")
    return response.status, value


def ok(socket_path, method, path, body=None, timeout=60):
    """The body of a call that must answer 2xx; anything else raises `Refused`."""
    status, value = call(socket_path, method, path, body, timeout)
    if not 200 <= status < 300:
        raise Refused(status, value, f"{method} {path}")
    return value


class Refused(Exception):
    """The daemon answered, but not 2xx."""

    def __init__(self, status, body, what):
        super().__init__(f"{what}: {status} {body}")
        self.status = status
        self.body = body

    @property
    def code(self):
        if isinstance(self.body, dict):
            return self.body.get("error", {}).get("code")
        return None


def all_certificates(socket_path):
    """Every certificate, through the paginated list (1000 a page)."""
    certs, after = [], None
    while True:
        path = "/v1/certificates?limit=1000" + (f"&after={after}" if after else "")
        page = ok(socket_path, "GET", path)
        certs.extend(page["certificates"])
        after = page.get("next_page")
        if not after:
            return certs


def events_after(socket_path, after):
    """Every event after cursor `after`, through the paginated outbox (1000 a page)."""
    events = []
    while True:
        page = ok(socket_path, "GET", f"/v1/events?after={after}&limit=1000")["events"]
        events.extend(page)
        if len(page) < 1000:
            return events
        after = page[-1]["cursor"]
