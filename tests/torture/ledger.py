"""What the workload knows the daemon has: the ledger the invariants are checked against.

A request the daemon acknowledged (a 2xx answer received) is *acknowledged*: what it created
or changed must be in the store from then on. A request sent without a complete answer (the
daemon was killed first) has an *unknown* outcome: it may or may not have been committed. The
first check after the next restart *resolves* it by looking (nothing of a killed run can still
be in flight): a creation found is adopted, one not found is dead and must never appear later;
a revocation or deletion found is done, one not found never happened. Whatever a check has
seen in the store (versions, serials, events) is treated as acknowledged from then on: a
commit the API showed once must survive every later kill.

Every certificate the workload creates has a name saying which attempt made it
(`<kind>-<n>...`), so a certificate of an unknown-outcome creation can be told apart from one
nobody asked for.
"""

import threading

# Certificate kinds (what the workload asked for).
SHORT, LONG, SIGNED, IMPORTED, ACME = "short", "long", "signed", "imported", "acme"


class Cert:
    def __init__(self, cert_id, kind, name, domains):
        self.id, self.kind, self.name, self.domains = cert_id, kind, name, tuple(domains)
        self.versions = {}  # version -> serial: acknowledged, or seen in the store
        self.acknowledged = set()  # versions an answer acknowledged (not only seen)
        self.revoke = None  # None, ("unknown", epoch) or "done"
        self.delete = None  # None, ("unknown", epoch) or "done"
        self.csr_public_key = None  # SIGNED: the CSR's public key, which the certificate must carry
        self.keys_checked = set()  # versions whose exported key matched the certificate
        self.keys_failed = set()  # versions whose key check failed (reported once)

    @property
    def gone(self):
        """Deleted, or perhaps deleted: the store may not have it."""
        return self.delete is not None

    @property
    def active(self):
        return self.revoke is None and self.delete is None


class Attempt:
    """A creation whose answer never came: resolved by name at the next restart."""

    def __init__(self, kind, names, epoch, domains=None, csr_public_keys=None):
        self.kind, self.names, self.epoch = kind, list(names), epoch
        self.domains = domains or {}
        self.csr_public_keys = csr_public_keys or {}


class Ledger:
    def __init__(self):
        self.lock = threading.Lock()
        self.certs = {}  # id -> Cert
        self.by_name = {}  # name -> id
        self.attempts = []  # Attempt
        self.in_flight = set()  # names of creations sent and not answered yet
        self.dead_names = set()  # unknown creations found absent after a restart
        self.batches = {}  # batch tag -> (names, acknowledged: bool)
        self.events = {}  # event id -> (cursor, body) as the outbox showed them
        self.last_cursor = 0  # the highest outbox cursor read through the API
        self.sink_cursors = {}  # sink -> the highest cursor seen saved in the store
        self.counts = {}  # what the workload did: "issued", "imported", ... -> n

    def count(self, what, n=1):
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + n

    # --- answers ------------------------------------------------------------------------

    def created(self, kind, body, domains=None, csr_public_key=None):
        """An acknowledged creation: `body` is the certificate the daemon answered with."""
        with self.lock:
            cert = Cert(body["id"], kind, body["name"], domains or body["domains"])
            cert.csr_public_key = csr_public_key
            if body["current_version"]:
                cert.versions[body["current_version"]] = body["serial"]
                cert.acknowledged.add(body["current_version"])
            self.certs[cert.id] = cert
            self.by_name[cert.name] = cert.id

    def versioned(self, body):
        """An acknowledged renewal or re-import: the new version must stay."""
        with self.lock:
            cert = self.certs.get(body["id"])
            if cert is not None:
                cert.versions[body["current_version"]] = body["serial"]
                cert.acknowledged.add(body["current_version"])

    def unknown(self, attempt):
        with self.lock:
            self.attempts.append(attempt)

    def pick(self, rng, predicate):
        with self.lock:
            choices = [c for c in self.certs.values() if predicate(c)]
        return rng.choice(choices) if choices else None

    def claim(self, rng, predicate, what, epoch):
        """Picks an active certificate matching `predicate` and marks its revocation or
        deletion (`what`) unknown-outcome before the request is sent; None when none."""
        with self.lock:
            choices = [c for c in self.certs.values() if c.active and predicate(c)]
            if not choices:
                return None
            cert = rng.choice(choices)
            setattr(cert, what, ("unknown", epoch))
            return cert

    def settle(self, cert, what, done):
        """The answer to a revocation or deletion: done, or refused (so it never happened)."""
        with self.lock:
            setattr(cert, what, "done" if done else None)
