"""The invariants, checked after each restart (once the daemon answers) and at the end.

Sources, and why each: the API (`GET /v1/certificates`, `/v1/events`, `export`, `pem`) is
what a user sees, so presence and keys are checked through it; the store file, opened
read-only (`mode=ro`, one read transaction, while the daemon runs in WAL mode), gives one
consistent snapshot of versions, events, sink cursors and ACME orders, which no API lists
whole. Sealed keys are never read from the file: keys are checked through `export`.

The order of reads matters where something runs concurrently (the workload goes on during a
check, and the daemon renews and delivers by itself): what must be *in* the store is taken
before the store is read (the ledger, the events read through the API, Pebble's issued
certificates, the receiver's deliveries), and what the store must be *explained by* is taken
after it (names of creations in flight, what the receiver has for the saved cursor).
"""

import concurrent.futures
import json
import random
import re
import sqlite3
import subprocess
import time

import api
from ledger import ACME, SIGNED, Cert

PASSPHRASE = "torture check passphrase"


def norm(serial):
    return (serial or "").lower().lstrip("0")


def integrity(db):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def snapshot(db):
    """One read transaction over what the invariants need."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        conn.execute("BEGIN")
        certs = {row[0]: {"name": row[1], "status": row[2], "origin": row[3],
                          "current_version": row[4], "serial": row[5]}
                 for row in conn.execute("SELECT id, name, status, origin, current_version, serial FROM certificates")}
        versions, signed_by = {}, {}
        for cert_id, version, serial, key_held, ca in conn.execute(
                "SELECT certificate_id, version, serial, key_blob IS NOT NULL, issuer_ca FROM versions"):
            versions.setdefault(cert_id, {})[version] = (serial, bool(key_held))
            if ca is not None:
                signed_by[(cert_id, version)] = ca
        revocations = set(conn.execute("SELECT ca, serial FROM revocations"))
        events = conn.execute("SELECT seq, id, detail_type, certificate_id, body FROM events ORDER BY seq").fetchall()
        cursors = dict(conn.execute("SELECT sink, seq FROM sink_cursors"))
        orders = {row[0] for row in conn.execute("SELECT certificate_id FROM acme_orders")}
        conn.execute("COMMIT")
        for row in certs.values():
            row["signed_by"] = {}
        for (cert_id, version), ca in signed_by.items():
            if cert_id in certs:
                certs[cert_id]["signed_by"][version] = ca
        return certs, versions, events, cursors, orders, revocations
    finally:
        conn.close()


class Checker:
    def __init__(self, run):
        self.run = run  # the driver: socket, db, ledger, receiver, pebble, log, options
        self.rng = random.Random(f"{run.seed}/checker")
        self.log_offset = 0
        self.parsed = {}  # event seq -> (raw body, parsed body)
        self.stats = {"checks": 0, "keys checked": 0, "CSR keys checked": 0, "rechecks": 0,
                      "events verified": 0, "adopted": 0, "dead": 0}
        self.problems_seen = 0  # receiver problems already reported
        self.seconds = {}  # phase of a check -> seconds spent in it, over the run
        self.errors_in_log = {}  # ERROR message -> count
        self.warnings_in_log = {}

    # --- the whole check ------------------------------------------------------------------

    def check(self, epoch, final=False):
        """Every invariant; returns the failures (empty when all hold)."""
        run, ledger = self.run, self.run.ledger
        failures = []
        self.stats["checks"] += 1
        clock = [time.monotonic()]

        def phase(name):
            now = time.monotonic()
            self.seconds[name] = self.seconds.get(name, 0) + now - clock[0]
            clock[0] = now

        result = integrity(run.db)
        if result != ["ok"]:
            failures.append(f"PRAGMA integrity_check: {result[:5]}")
        phase("integrity_check")

        # What must be in the store: taken before it is read.
        with ledger.lock:
            certs = {c.id: _copy(c) for c in ledger.certs.values()}
            batches = dict(ledger.batches)
        delivered_before, problems = run.receiver.snapshot()
        failures += problems[self.problems_seen:]
        self.problems_seen = len(problems)
        issued_before = run.pebble.issued()
        listed = {c["id"]: c for c in api.all_certificates(run.socket)}
        new_events = api.events_after(run.socket, ledger.last_cursor)
        phase("reads before the store")

        store_certs, versions, events, cursors, orders, revocations = snapshot(run.db)
        phase("store snapshot")

        # What the store must be explained by: taken after it was read.
        with ledger.lock:
            names_known = set(ledger.by_name) | ledger.in_flight | {
                n for a in ledger.attempts for n in a.names}
            dead = set(ledger.dead_names)
        delivered_after, _ = run.receiver.snapshot()
        issued_after = run.pebble.issued()
        phase("reads after the store")

        by_name = {row["name"]: cert_id for cert_id, row in store_certs.items()}
        failures += self._presence(certs, listed, versions)
        failures += self._names(store_certs, names_known, dead, batches, by_name)
        failures += self._versions(store_certs, versions)
        failures += self._events(new_events, events, versions, store_certs)
        failures += self._delivery(events, cursors, delivered_before, delivered_after)
        failures += self._acme(certs, store_certs, versions, orders, issued_before, issued_after, final)
        failures += self._revocations(store_certs, versions, revocations, final)
        self._resolve(epoch, store_certs, versions, listed, by_name)
        phase("comparisons")
        failures += self._keys(versions, final)
        phase("keys")
        failures += self._log()
        if final:
            failures += self._final(listed, events, delivered_after)
        phase("log")
        return failures

    # --- presence of what was acknowledged ------------------------------------------------

    def _presence(self, certs, listed, versions):
        failures = []
        for cert in certs.values():
            present = cert.id in listed
            if cert.delete == "done":
                if present:
                    failures.append(f"{cert.id} ({cert.name}): deleted (acknowledged) but listed")
                continue
            if cert.gone or self.run.ledger.certs[cert.id].gone:
                continue  # a deletion of unknown outcome, or one sent while this check ran
            if not present:
                failures.append(f"{cert.id} ({cert.name}): acknowledged but missing from the list")
                continue
            if cert.revoke == "done" and listed[cert.id]["status"] != "revoked":
                failures.append(f"{cert.id}: revoked (acknowledged) but {listed[cert.id]['status']}")
            stored = versions.get(cert.id, {})
            for version, serial in cert.versions.items():
                if version not in stored:
                    what = "acknowledged" if version in cert.acknowledged else "seen before"
                    failures.append(f"{cert.id}: version {version} ({what}, serial {serial}) missing")
                elif norm(stored[version][0]) != norm(serial):
                    failures.append(f"{cert.id}: version {version} is serial {stored[version][0]}, was {serial}")
            if listed[cert.id]["current_version"] < max(cert.versions, default=0):
                failures.append(f"{cert.id}: current version {listed[cert.id]['current_version']} "
                                f"behind version {max(cert.versions)} known")
        return failures

    def _names(self, store_certs, names_known, dead, batches, by_name):
        failures = []
        for name in by_name:
            if name in dead:
                failures.append(f"{name}: stored, but its creation was refused or found absent after a restart")
            elif name not in names_known:
                failures.append(f"{name}: stored, but nobody asked for it (or it was stored twice)")
        for tag, (names, acknowledged) in batches.items():
            stored = sum(1 for n in names if n in by_name)
            if stored not in (0, len(names)) or (acknowledged and stored != len(names)):
                failures.append(f"batch {tag}: {stored} of {len(names)} stored"
                                f"{' (acknowledged)' if acknowledged else ''}")
        return failures

    # --- versions: none twice -------------------------------------------------------------

    def _versions(self, store_certs, versions):
        failures, serials = [], {}
        for cert_id, row in store_certs.items():
            mine = versions.get(cert_id, {})
            current = row["current_version"]
            if sorted(mine) != list(range(1, current + 1)):
                failures.append(f"{cert_id}: versions {sorted(mine)} with current_version {current}")
            if current and current in mine and norm(mine[current][0]) != norm(row["serial"]):
                failures.append(f"{cert_id}: serial {row['serial']} is not version {current}'s {mine[current][0]}")
            for version, (serial, _) in mine.items():
                serials.setdefault(norm(serial), []).append(f"{cert_id} v{version}")
        for serial, where in serials.items():
            if len(where) > 1:
                failures.append(f"serial {serial} issued twice: {', '.join(where)}")
        return failures

    # --- events ---------------------------------------------------------------------------

    def _events(self, new_events, events, versions, store_certs):
        ledger, failures = self.run.ledger, []
        for entry in new_events:
            entry = dict(entry)
            cursor = entry.pop("cursor")
            if cursor <= ledger.last_cursor:
                failures.append(f"event {entry['id']}: cursor {cursor} not after {ledger.last_cursor}")
            ledger.last_cursor = max(ledger.last_cursor, cursor)
            if entry["id"] in ledger.events:
                failures.append(f"event {entry['id']} listed twice (cursors {ledger.events[entry['id']][0]}, {cursor})")
            ledger.events[entry["id"]] = (cursor, entry)
        by_id = {}
        for seq, event_id, detail_type, cert_id, body in events:
            cached = self.parsed.get(seq)
            if cached is None or cached[0] != body:
                cached = (body, json.loads(body))
                self.parsed[seq] = cached
            if event_id in by_id:
                failures.append(f"event id {event_id} stored twice (seq {by_id[event_id][0]} and {seq})")
            by_id[event_id] = (seq, cached[1])
        for event_id, (cursor, entry) in ledger.events.items():
            stored = by_id.get(event_id)
            if stored is None:
                failures.append(f"event {event_id} (cursor {cursor}, {entry['detail-type']}) missing from the outbox")
            elif stored[0] != cursor or stored[1] != entry:
                failures.append(f"event {event_id}: now seq {stored[0]} {stored[1]}, was cursor {cursor} {entry}")
        self.stats["events verified"] = len(ledger.events)

        available, revoked, approaching, expired = {}, {}, {}, {}
        for seq, body in by_id.values():
            cert_id = (body.get("resources") or [None])[0]
            detail = body.get("detail", {})
            kind = body.get("detail-type")
            if kind == "Certificate Available":
                key = (cert_id, detail.get("Version"))
                available.setdefault(key, []).append((seq, norm(detail.get("Serial"))))
            elif kind == "Certificate Revoked":
                revoked.setdefault(cert_id, []).append(seq)
            elif kind == "Certificate Approaching Expiration":
                key = (cert_id, body["time"][:10], norm(detail.get("Serial")))
                approaching.setdefault(key, []).append(seq)
            elif kind == "Certificate Expired":
                expired.setdefault((cert_id, norm(detail.get("Serial"))), []).append(seq)
        for cert_id, mine in versions.items():
            for version, (serial, _) in mine.items():
                got = available.get((cert_id, version), [])
                if len(got) != 1:
                    failures.append(f"{cert_id} v{version}: {len(got)} Certificate Available events {got}")
                elif got[0][1] != norm(serial):
                    failures.append(f"{cert_id} v{version}: its event names serial {got[0][1]}, not {serial}")
        for cert_id, row in store_certs.items():
            if row["status"] == "revoked" and len(revoked.get(cert_id, [])) != 1:
                failures.append(f"{cert_id}: revoked with {len(revoked.get(cert_id, []))} Revoked events")
        for key, seqs in approaching.items():
            if len(seqs) > 1:
                failures.append(f"{key[0]}: {len(seqs)} Approaching Expiration events on {key[1]} (seq {seqs})")
        for key, seqs in expired.items():
            if len(seqs) > 1:
                failures.append(f"{key[0]}: {len(seqs)} Expired events for serial {key[1]} (seq {seqs})")
        return failures

    def _delivery(self, events, cursors, delivered_before, delivered_after):
        """Delivered implies stored; the saved cursor never goes back and never passes an
        event the receiver did not accept."""
        ledger, failures = self.run.ledger, []
        stored = {row[1] for row in events}
        for event_id in delivered_before:
            if event_id not in stored:
                failures.append(f"event {event_id}: delivered to the receiver but not in the outbox")
        for sink, seq in cursors.items():
            if seq < ledger.sink_cursors.get(sink, 0):
                failures.append(f"sink {sink}: saved cursor went back from {ledger.sink_cursors[sink]} to {seq}")
            ledger.sink_cursors[sink] = max(seq, ledger.sink_cursors.get(sink, 0))
        hook = cursors.get(self.run.sink_name)
        if hook is not None:
            for seq, event_id, *_ in events:
                if seq <= hook and event_id not in delivered_after:
                    failures.append(f"sink {self.run.sink_name}: cursor {hook} is past event {event_id} "
                                    f"(seq {seq}), which the receiver never accepted")
        return failures

    # --- ACME: one issuance per version ---------------------------------------------------

    def _acme(self, certs, store_certs, versions, orders, issued_before, issued_after, final):
        failures = []
        per_names = {}
        for serial, names in issued_before.items():
            per_names.setdefault(names, set()).add(serial)
        after = set(issued_after)
        for cert_id, row in store_certs.items():
            if row["origin"] != "public":
                continue
            names = tuple(sorted(_domains(self.run, cert_id, certs)))
            stored = versions.get(cert_id, {})
            unstored = per_names.get(names, set()) - {norm(s) for s, _ in stored.values()}
            # One may be on its way into the store (its order is stored until then); one that
            # the store refused because the certificate was revoked meanwhile is revoked at
            # the CA. Any other is an issuance nobody holds: a duplicate.
            allowed = 1 if cert_id in orders else 0
            if len(unstored) > allowed:
                held = {s: self.run.pebble.status(s) for s in sorted(unstored)}
                valid = [s for s, status in held.items() if status != "Revoked"]
                if len(valid) > allowed:
                    failures.append(f"{cert_id} {names}: Pebble issued {sorted(per_names[names])}, "
                                    f"stored {sorted(norm(s) for s, _ in stored.values())}, "
                                    f"not stored and not revoked {valid}"
                                    f"{' (an order in flight)' if allowed else ''}")
            for version, (serial, _) in stored.items():
                if norm(serial) not in after:
                    failures.append(f"{cert_id} v{version}: serial {serial} not issued by Pebble")
        return failures

    # --- revocation: every version of a revoked certificate -------------------------------

    def _revocations(self, store_certs, versions, revocations, final):
        """Every version a certkeeper CA signed of a revoked certificate is on that CA's
        revocation list (in the store; at the end also in the CRL the API serves)."""
        failures, wanted = [], set()
        for cert_id, row in store_certs.items():
            if row["status"] != "revoked":
                continue
            for version, ca in row["signed_by"].items():
                serial = versions[cert_id][version][0]
                wanted.add((ca, serial))
                if (ca, serial) not in revocations:
                    failures.append(f"{cert_id} v{version}: revoked, but serial {serial} is not on CA {ca}'s list")
        if final:
            for ca in sorted({ca for ca, _ in revocations}):
                crl = api.call(self.run.socket, "GET", f"/v1/cas/{ca}/crl")[1]
                text = subprocess.run(["openssl", "crl", "-noout", "-text"], input=crl.encode(),
                                      capture_output=True).stdout.decode()
                on_crl = {norm(s) for s in re.findall(r"Serial Number: ([0-9A-Fa-f]+)", text)}
                for wanted_ca, serial in wanted:
                    if wanted_ca == ca and norm(serial) not in on_crl:
                        failures.append(f"serial {serial} of a revoked certificate is not on CA {ca}'s CRL")
        return failures

    # --- resolving unknown outcomes, adopting what the store shows ------------------------

    def _resolve(self, epoch, store_certs, versions, listed, by_name):
        ledger = self.run.ledger
        with ledger.lock:
            still = []
            for attempt in ledger.attempts:
                if attempt.epoch >= epoch:
                    still.append(attempt)
                    continue
                for name in attempt.names:
                    cert_id = by_name.get(name)
                    if cert_id is None or cert_id not in listed:
                        ledger.dead_names.add(name)
                        self.stats["dead"] += 1
                        continue
                    if cert_id not in ledger.certs:
                        cert = Cert(cert_id, attempt.kind, name, listed[cert_id]["domains"])
                        cert.csr_public_key = attempt.csr_public_keys.get(name)
                        ledger.certs[cert_id] = cert
                        ledger.by_name[name] = cert_id
                        self.stats["adopted"] += 1
            ledger.attempts = still
            for cert in ledger.certs.values():
                for what in ("revoke", "delete"):
                    state = getattr(cert, what)
                    if isinstance(state, tuple) and state[1] < epoch:
                        if what == "delete":
                            done = cert.id not in store_certs
                        else:
                            done = store_certs.get(cert.id, {}).get("status") == "revoked"
                        setattr(cert, what, "done" if done else None)
                if cert.id in store_certs and not cert.gone:
                    for version, (serial, _) in versions.get(cert.id, {}).items():
                        cert.versions.setdefault(version, serial)

    # --- keys -----------------------------------------------------------------------------

    def _keys(self, versions, final):
        """Exports each version not checked yet (all at the end; at most `key_budget` per
        check otherwise) and a few checked ones again, and compares the key's public key
        with the certificate's. Signed certificates: the certificate carries the CSR's key."""
        ledger, failures = self.run.ledger, []
        with ledger.lock:
            todo, done = [], []
            for cert in ledger.certs.values():
                if cert.gone:
                    continue
                for version, (serial, key_held) in versions.get(cert.id, {}).items():
                    if cert.kind == SIGNED and version != 1:
                        continue
                    if version in cert.keys_failed and not final:
                        continue  # reported once; the final check tries it again
                    target = done if version in cert.keys_checked else todo
                    target.append((cert, version, serial, key_held))
        budget = len(todo) if final else self.run.options.key_budget
        again = self.rng.sample(done, min(30 if final else 1, len(done)))
        picks = [(p, False) for p in todo[:budget]] + [(p, True) for p in again]

        def one(pick):
            (cert, version, serial, key_held), _ = pick
            try:
                return self._key(cert, version, serial, key_held)
            except api.Refused as refused:
                if refused.status == 404 and self.run.ledger.certs[cert.id].gone:
                    return "gone"
                return str(refused)

        # openssl's PBKDF2 (310,000 rounds) is most of a check's time: two at once.
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            problems = list(pool.map(one, picks))
        for ((cert, version, serial, key_held), recheck), problem in zip(picks, problems):
            if problem == "gone":
                continue
            with ledger.lock:
                if problem:
                    cert.keys_failed.add(version)
                else:
                    cert.keys_checked.add(version)
                    cert.keys_failed.discard(version)
            if problem:
                failures.append(f"{cert.id} v{version}: {problem}")
            if recheck:
                self.stats["rechecks"] += 1
            else:
                self.stats["CSR keys checked" if cert.kind == SIGNED else "keys checked"] += 1
        return failures

    def _key(self, cert, version, serial, key_held):
        run = self.run
        if cert.kind == SIGNED:
            if key_held:
                return "a signed CSR's version holds a key"
            pem = api.ok(run.socket, "GET", f"/v1/certificates/{cert.id}/pem?version={version}")
            got_serial, public = certificate_facts(pem["certificate"])
            if cert.csr_public_key is not None and public != cert.csr_public_key:
                return "the certificate does not carry the CSR's key"
            return None if norm(got_serial) == norm(serial) else f"pem serial {got_serial}, stored {serial}"
        if not key_held:
            return "no key held for a version certkeeper made or imported"
        body = {"passphrase": PASSPHRASE, "format": "pem", "version": version}
        exported = api.ok(run.socket, "POST", f"/v1/certificates/{cert.id}/export", body)
        got_serial, public = certificate_facts(exported["certificate"])
        if norm(got_serial) != norm(serial):
            return f"exported certificate is serial {got_serial}, stored {serial}"
        if key_public(exported["private_key"]) != public:
            return "the exported key does not match the certificate"
        return None

    # --- the daemon's log -----------------------------------------------------------------

    def _log(self):
        failures = []
        with open(self.run.log, errors="replace") as f:
            f.seek(self.log_offset)
            text = f.read()
            self.log_offset = f.tell()
        for line in text.splitlines():
            if "panicked" in line:
                failures.append(f"panic in the daemon's log: {line.strip()[:300]}")
            for level, counts in ((" ERROR ", self.errors_in_log), (" WARN ", self.warnings_in_log)):
                if level in line:
                    message = _message(line.split(level, 1)[1])
                    counts[message] = counts.get(message, 0) + 1
        return failures

    # --- at the end -----------------------------------------------------------------------

    def _final(self, listed, events, delivered):
        failures = []
        with self.run.ledger.lock:
            acme = [c for c in self.run.ledger.certs.values() if c.kind == ACME and not c.gone]
        for cert in acme:
            row = listed.get(cert.id)
            if row is not None and row["current_version"] == 0 and row["status"] != "revoked":
                failures.append(f"{cert.id} ({cert.name}): never issued ({row['status']}, {row.get('renewal')})")
        return failures

    def undelivered(self):
        """Events of the outbox the receiver never accepted, and ones never in the journal
        sink's log lines: [(seq, id, detail type, where)]."""
        _, _, events, _, _, _ = snapshot(self.run.db)
        delivered, _ = self.run.receiver.snapshot()
        with open(self.run.log, errors="replace") as f:
            journal = set(re.findall(r"event_id=([0-9a-f-]{36})", f.read()))
        missing = []
        for seq, event_id, detail_type, *_ in events:
            if event_id not in delivered:
                missing.append((seq, event_id, detail_type, "receiver"))
            if event_id not in journal:
                missing.append((seq, event_id, detail_type, "journal"))
        return missing, len(events)


def _copy(cert):
    copy = Cert(cert.id, cert.kind, cert.name, cert.domains)
    copy.versions, copy.acknowledged = dict(cert.versions), set(cert.acknowledged)
    copy.revoke, copy.delete = cert.revoke, cert.delete
    return copy


def _domains(run, cert_id, certs):
    cert = certs.get(cert_id) or run.ledger.certs.get(cert_id)
    if cert is not None:
        return cert.domains
    return api.ok(run.socket, "GET", f"/v1/certificates/{cert_id}")["domains"]


def _message(rest):
    """The message of a log line after its level, without the span prefix and the fields."""
    rest = re.sub(r"^[\w{}=\-:.\s]*?}: ", "", rest.strip())
    return re.split(r" [a-z_]+=", rest, maxsplit=1)[0][:120]


def certificate_facts(pem):
    """(serial, public key PEM) of a certificate, from one openssl run."""
    out = subprocess.run(["openssl", "x509", "-noout", "-serial", "-pubkey"], input=pem.encode(),
                         capture_output=True, check=True).stdout.decode()
    serial, public = out.split("\n", 1)
    return serial.strip().split("=", 1)[1], public


def key_public(encrypted_pem):
    """The public key (PEM) of a passphrase-encrypted PKCS#8 key."""
    out = subprocess.run(["openssl", "pkey", "-pubout", "-passin", f"pass:{PASSPHRASE}"],
                         input=encrypted_pem.encode(), capture_output=True)
    if out.returncode != 0:
        return f"(openssl pkey failed: {out.stderr.decode()[:200]})"
    return out.stdout.decode()
