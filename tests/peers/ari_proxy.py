#!/usr/bin/python3
"""ACME renewal information (ARI, RFC 9773) and profiles in front of Pebble.

Debian's Pebble 2.4 has neither, so tests put this HTTPS proxy in front of it. Everything is
forwarded to Pebble unchanged, with the client's Host header, so the URLs Pebble puts in its
answers (and checks in each JWS) are the proxy's. On top of Pebble it

- adds `renewalInfo` and `meta.profiles` to the directory;
- answers `GET /renewal-info/<certID>` with the suggested window and a Retry-After header;
- on newOrder, reflects the `replaces` and `profile` fields of the request in the order, as a
  CA supporting them does (Pebble ignores both), refuses unknown profiles, and can refuse a
  `replaces` (alreadyReplaced) a configured number of times;
- can answer newOrder with 429 rateLimited and a Retry-After a configured number of times;
- can answer the certificate download (`/certZ/...`, after a successful finalize) with 503
  serverInternal a configured number of times, as a CA in trouble would;
- can pass an account key change (`/rollover-account-key`) on to Pebble and then close the
  connection without its answer, as a network failure at the worst moment would (the CA has
  switched keys, the client does not know);
- can pass a challenge answer (`/chalZ/...`) on to Pebble and then answer 503 serverInternal,
  as a CA whose answer was lost would (the CA validates; the client does not know);
- can answer order fetches (`/my-order/...`, `/finalize-order/...`) with the order's status
  changed to invalid, all of them or only those Pebble calls valid (with their certificate
  URL), as a CA that fails an order after issuing it would;
- can answer a certificate download with another leaf or another chain than Pebble issued
  (the PEM the test gives), as a buggy CA or a meddling proxy would;
- logs every newOrder payload and renewal-info request as one JSON line in --log, with the
  time it arrived (`at`, Unix seconds) and the status given when the proxy answered itself.

The test changes its behaviour with `POST /test-control` (plain JSON, not ACME):
  {"windows": [[start_offset_s, end_offset_s], ...],
   "retry_after": seconds, "reject_replaces": count,
   "rate_limit_orders": count, "rate_limit_retry_after": seconds,
   "fail_downloads": count, "drop_key_changes": count, "lose_challenge_answers": count,
   "invalidate_orders": count, "invalidate_only_valid": bool,
   "replace_downloads": [{"leaf": PEM or null, "chain": PEM or null}, ...]}
Each entry of `replace_downloads` rewrites one successful download, in order: `leaf` replaces
the first certificate, `chain` the ones after it.
Each certificate gets its window the first time it is asked about: the first of `windows`
(offsets from that moment), which is then dropped unless it is the last one. A certificate
keeps its window, as a CA's would, until `"forget": true` clears them all.

Usage: ari_proxy.py --listen PORT --upstream https://127.0.0.1:P --ca PEBBLE_TLS_CA
                    --cert TLS_CERT --key TLS_KEY --log FILE
"""

import argparse
import base64
import datetime
import http.client
import http.server
import json
import ssl
import sys
import threading
import time
import urllib.parse

PROFILES = {
    "classic": "the usual 90-day certificate",
    "shortlived": "a 6-day certificate",
}

STATE = {"windows": [[-60, 60]], "retry_after": 3600, "reject_replaces": 0,
         "rate_limit_orders": 0, "rate_limit_retry_after": 0, "fail_downloads": 0,
         "replace_downloads": [], "drop_key_changes": 0, "lose_challenge_answers": 0,
         "invalidate_orders": 0, "invalidate_only_valid": False}
WINDOWS = {}  # certID -> (start, end) as RFC 3339 strings
LOCK = threading.Lock()
ARGS = None

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailers", "transfer-encoding", "upgrade", "content-length",
}


def log(entry):
    entry["at"] = time.time()
    with LOCK:
        with open(ARGS.log, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def rfc3339(offset_seconds):
    now = datetime.datetime.now(datetime.timezone.utc)
    at = now + datetime.timedelta(seconds=offset_seconds)
    return at.replace(microsecond=0).isoformat().replace("+00:00", "Z")


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the JSON log is what tests read
        sys.stderr.write("%s %s\n" % (self.command, self.path))

    def upstream(self, method, path, body=None):
        parsed = urllib.parse.urlsplit(ARGS.upstream)
        context = ssl.create_default_context(cafile=ARGS.ca)
        conn = http.client.HTTPSConnection(parsed.hostname, parsed.port, context=context,
                                           timeout=30)
        # The client's Host (any spelling) goes on unchanged: Pebble builds its URLs from it.
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in HOP_BY_HOP and k.lower() != "host"}
        headers["Host"] = self.headers.get("Host", "")
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, response.getheaders(), data

    def reply(self, status, headers, body):
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def problem(self, status, kind, detail, extra_headers=()):
        # A fresh nonce comes with every ACME answer, errors included.
        _, headers, _ = self.upstream("HEAD", "/nonce-plz")
        nonce = [(k, v) for k, v in headers if k.lower() == "replay-nonce"]
        nonce += list(extra_headers)
        body = json.dumps({"type": "urn:ietf:params:acme:error:" + kind,
                           "detail": detail, "status": status}).encode()
        self.reply(status, nonce + [("Content-Type", "application/problem+json")], body)

    def do_HEAD(self):
        self.forward()

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/dir":
            status, headers, body = self.upstream("GET", self.path)
            if status != 200:
                self.reply(status, headers, body)
                return
            directory = json.loads(body)
            base = "https://" + self.headers.get("Host", "")
            directory["renewalInfo"] = base + "/renewal-info"
            directory.setdefault("meta", {})["profiles"] = PROFILES
            self.reply(status, headers, json.dumps(directory).encode())
        elif path.startswith("/renewal-info/"):
            cert_id = path[len("/renewal-info/"):]
            log({"renewal-info": cert_id})
            if "." not in cert_id:
                self.reply(400, [("Content-Type", "application/problem+json")],
                           b'{"type":"urn:ietf:params:acme:error:malformed"}')
                return
            with LOCK:
                if cert_id not in WINDOWS:
                    start, end = STATE["windows"][0]
                    if len(STATE["windows"]) > 1:
                        STATE["windows"].pop(0)
                    WINDOWS[cert_id] = (rfc3339(start), rfc3339(end))
                start, end = WINDOWS[cert_id]
                retry_after = STATE["retry_after"]
            body = json.dumps({"suggestedWindow": {"start": start, "end": end}}).encode()
            self.reply(200, [("Content-Type", "application/json"),
                             ("Retry-After", str(retry_after))], body)
        else:
            self.forward()

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        path = urllib.parse.urlsplit(self.path).path
        if path == "/test-control":
            with LOCK:
                settings = json.loads(body)
                if settings.pop("forget", False):
                    WINDOWS.clear()
                STATE.update(settings)
            self.reply(200, [("Content-Type", "application/json")], b"{}")
            return
        if path == "/rollover-account-key":
            with LOCK:
                drop = STATE["drop_key_changes"] > 0
                if drop:
                    STATE["drop_key_changes"] -= 1
            status, headers, data = self.upstream("POST", self.path, body)
            log({"key-change": status, "dropped": drop})
            if drop:
                self.close_connection = True
                return
            self.reply(status, headers, data)
            return
        if path.startswith("/certZ/"):
            with LOCK:
                fail = STATE["fail_downloads"] > 0
                if fail:
                    STATE["fail_downloads"] -= 1
            log({"certificate-download": path, "status": 503 if fail else None})
            if fail:
                self.problem(503, "serverInternal", "the certificate is not available yet")
                return
            self.download(path, body)
            return
        if path.startswith("/chalZ/"):
            with LOCK:
                lose = STATE["lose_challenge_answers"] > 0
                if lose:
                    STATE["lose_challenge_answers"] -= 1
            status, headers, data = self.upstream("POST", self.path, body)
            log({"challenge": path, "status": status, "lost": lose})
            if lose:
                self.problem(503, "serverInternal", "the answer to the challenge was lost")
                return
            self.reply(status, headers, data)
            return
        if path.startswith("/my-order/") or path.startswith("/finalize-order/"):
            status, headers, data = self.upstream("POST", self.path, body)
            if status == 200:
                order = json.loads(data)
                with LOCK:
                    lie = STATE["invalidate_orders"] > 0 and (
                        order.get("status") == "valid" or not STATE["invalidate_only_valid"])
                    if lie:
                        STATE["invalidate_orders"] -= 1
                if lie:
                    log({"invalidated-order": path, "was": order.get("status"),
                         "certificate": order.get("certificate")})
                    order["status"] = "invalid"
                    data = json.dumps(order).encode()
            self.reply(status, headers, data)
            return
        if path != "/order-plz":
            self.forward(body)
            return
        payload = json.loads(b64url_decode(json.loads(body)["payload"]))
        with LOCK:
            limited = STATE["rate_limit_orders"] > 0
            if limited:
                STATE["rate_limit_orders"] -= 1
            wait = STATE["rate_limit_retry_after"]
        if limited:
            log({"new-order": payload, "status": 429})
            self.problem(429, "rateLimited", "too many new orders; retry after %ds" % wait,
                         [("Retry-After", str(wait))])
            return
        log({"new-order": payload})
        profile = payload.get("profile")
        if profile is not None and profile not in PROFILES:
            self.problem(400, "invalidProfile", "unknown profile %r" % profile)
            return
        replaces = payload.get("replaces")
        if replaces is not None:
            with LOCK:
                refuse = STATE["reject_replaces"] > 0
                if refuse:
                    STATE["reject_replaces"] -= 1
            if refuse:
                self.problem(409, "alreadyReplaced", "%s was already replaced" % replaces)
                return
        status, headers, data = self.upstream("POST", self.path, body)
        if status == 201:
            order = json.loads(data)
            if replaces is not None:
                order["replaces"] = replaces
            if profile is not None:
                order["profile"] = profile
            data = json.dumps(order).encode()
        self.reply(status, headers, data)

    def download(self, path, body):
        status, headers, data = self.upstream("POST", self.path, body)
        with LOCK:
            replace = STATE["replace_downloads"].pop(0) if (
                status == 200 and STATE["replace_downloads"]) else None
        if replace is not None:
            end = "-----END CERTIFICATE-----"
            blocks = [b.strip() + "\n" + end + "\n" for b in data.decode().split(end)
                      if b.strip()]
            leaf = replace.get("leaf") or blocks[0]
            chain = replace.get("chain") or "".join(blocks[1:])
            data = (leaf.strip() + "\n" + chain).encode()
            log({"certificate-download": path, "replaced": sorted(
                k for k in ("leaf", "chain") if replace.get(k))})
        self.reply(status, headers, data)

    def forward(self, body=None):
        status, headers, data = self.upstream(self.command, self.path, body)
        self.reply(status, headers, data)


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--listen", "--upstream", "--ca", "--cert", "--key", "--log"):
        parser.add_argument(flag, required=True)
    ARGS = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(ARGS.listen)), Proxy)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ARGS.cert, ARGS.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
