"""The mixed workload: a few client threads sending requests through the API socket while the
daemon runs, and recording each outcome in the ledger.

Operations, by weight: short-lived private certificates (90-300 s, renewing by themselves every
15-60 s), long-lived private ones (various key algorithms), CSR batches (`sign/batch`),
imports and re-imports, manual renewals, ACME orders (HTTP-01 against Pebble), revocations and
deletions (which also retire short-lived and ACME certificates so that their number stays
bounded), and key exports (each one audited, so a write too).

Each creation is named after its attempt (see ledger.py). A 4xx answer to a creation means
nothing was stored (the name is dead); a 5xx or no answer means the outcome is unknown.
"""

import random
import threading
import time

import api
from ledger import ACME, IMPORTED, LONG, SHORT, SIGNED, Attempt

KEY_ALGORITHMS = ["ec-p256"] * 14 + ["ec-p384"] * 3 + ["ed25519"] * 2 + ["rsa-2048"]


class Workload:
    def __init__(self, socket_path, ledger, materials, seed, options):
        self.socket, self.ledger, self.materials = socket_path, ledger, materials
        self.options = options
        self.seed = seed
        # The gate: operations start only while it is open, each counted in flight and
        # tagged with the daemon run (epoch) it goes to. The driver closes it and waits for
        # the operations in flight to end before it starts the next run, so an operation
        # tagged with one run can never reach the next one.
        self.gate = threading.Condition()
        self.open = False
        self.stopping = False
        self.in_flight = 0
        self.epoch = 0
        self.local = threading.local()
        self.lock = threading.Lock()
        self.next_n = 0
        self.outcomes = {}  # (operation, outcome) -> n, outcome "2xx", "4xx:<code>", ...
        self.anomalies = []  # 5xx answers, with their bodies
        self.errors = []  # exceptions in the workload itself
        self.threads = []
        self.weights = {
            self.short: 10, self.long: 6, self.sign_batch: 3, self.import_new: 4,
            self.reimport: 2, self.renew: 3, self.acme: 3, self.export: 1,
        }

    def start(self, workers):
        for i in range(workers):
            rng = random.Random(f"{self.seed}/worker/{i}")
            thread = threading.Thread(target=self._work, args=(rng,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def resume(self, epoch):
        """Lets operations go to daemon run `epoch`."""
        with self.gate:
            self.epoch, self.open = epoch, True
            self.gate.notify_all()

    def halt(self):
        """Stops new operations and waits for those in flight (after a kill they fail fast)."""
        with self.gate:
            self.open = False
            while self.in_flight:
                self.gate.wait()

    def stop(self):
        with self.gate:
            self.stopping = True
            self.gate.notify_all()
        for thread in self.threads:
            thread.join()

    def _work(self, rng):
        ops, weights = list(self.weights), list(self.weights.values())
        while True:
            with self.gate:
                while not self.open and not self.stopping:
                    self.gate.wait()
                if self.stopping:
                    return
                self.in_flight += 1
                self.local.epoch = self.epoch
            try:
                rng.choices(ops, weights)[0](rng)
            except Exception as err:  # a bug of the workload: reported, the thread goes on
                with self.lock:
                    self.errors.append(repr(err))
            finally:
                with self.gate:
                    self.in_flight -= 1
                    self.gate.notify_all()
            time.sleep(rng.uniform(0, self.options.pause))

    def _n(self):
        with self.lock:
            self.next_n += 1
            return self.next_n

    def _outcome(self, op, outcome, status=None, body=None):
        with self.lock:
            self.outcomes[(op, outcome)] = self.outcomes.get((op, outcome), 0) + 1
            if status is not None and status >= 500:
                code = body.get("error", {}).get("code") if isinstance(body, dict) else None
                self.anomalies.append((op, status, code, str(body)[:300]))

    def _send(self, op, method, path, body):
        """(status, body), or None when no answer came (the outcome is unknown)."""
        epoch = self.local.epoch
        try:
            status, value = api.call(self.socket, method, path, body)
        except api.Unreachable:
            self._outcome(op, "no answer")
            return None, epoch
        outcome = "2xx" if 200 <= status < 300 else f"{status}"
        if not 200 <= status < 300 and isinstance(value, dict):
            outcome += ":" + str(value.get("error", {}).get("code"))
        self._outcome(op, outcome, status, value)
        return (status, value), epoch

    def _create(self, op, kind, names, path, body, counted, domains=None, csr_keys=None):
        """Sends a creation; records it as acknowledged, dead (4xx) or unknown."""
        with self.ledger.lock:
            self.ledger.in_flight.update(names)
        try:
            return self._record_creation(op, kind, names, path, body, counted, domains, csr_keys)
        finally:
            with self.ledger.lock:
                self.ledger.in_flight.difference_update(names)

    def _record_creation(self, op, kind, names, path, body, counted, domains, csr_keys):
        answer, epoch = self._send(op, "POST", path, body)
        if answer is not None and 200 <= answer[0] < 300:
            self.ledger.count(counted, len(names))
            if kind == SIGNED:
                for entry in answer[1]["signed"]:
                    cert = entry["certificate"]
                    self.ledger.created(SIGNED, cert, csr_public_key=csr_keys[cert["name"]])
            else:
                self.ledger.created(kind, answer[1])
            return answer[1]
        if answer is not None and 400 <= answer[0] < 500:
            with self.ledger.lock:
                self.ledger.dead_names.update(names)
            return None
        self.ledger.unknown(Attempt(kind, names, epoch, domains, csr_keys))
        return None

    # --- operations -----------------------------------------------------------------------

    def short(self, rng):
        active = self._active(SHORT)
        if active >= self.options.short_cap:
            return self._retire(rng, SHORT)
        name = f"short-{self._n()}.torture.internal"
        validity = rng.randint(90, 300)
        body = {"domains": [name], "validity": f"{validity}s",
                "renew_before": f"{validity - rng.randint(15, 60)}s"}
        self._create("short", SHORT, [name], "/v1/certificates", body, "issued")

    def long(self, rng):
        name = f"long-{self._n()}.torture.internal"
        body = {"domains": [name, f"www.{name}"], "key_algorithm": rng.choice(KEY_ALGORITHMS)}
        self._create("long", LONG, [name], "/v1/certificates", body, "issued")

    def sign_batch(self, rng):
        n = self._n()
        picks = [rng.choice(self.materials.csrs) for _ in range(rng.randint(1, 5))]
        names = [f"sign-{n}-{i}" for i in range(len(picks))]
        tag = f"b{n}"
        requests = [{"csr": csr, "name": name, "tags": {"batch": tag}}
                    for (csr, _), name in zip(picks, names)]
        keys = {name: key for (_, key), name in zip(picks, names)}
        with self.ledger.lock:
            self.ledger.batches[tag] = (names, False)
        signed = self._create("sign", SIGNED, names, "/v1/sign/batch", {"requests": requests},
                              "signed", csr_keys=keys)
        if signed:
            with self.ledger.lock:
                self.ledger.batches[tag] = (names, True)

    def import_new(self, rng):
        name, leaf = self.materials.next_import()
        body = dict(leaf, name=name)
        self._create("import", IMPORTED, [name], "/v1/certificates/import", body, "imported")

    def reimport(self, rng):
        cert = self.ledger.pick(rng, lambda c: c.kind == IMPORTED and c.active)
        if cert is None:
            return self.import_new(rng)
        body = dict(self.materials.leaf(cert.domains[0]), certificate_id=cert.id)
        answer, _ = self._send("reimport", "POST", "/v1/certificates/import", body)
        if answer and 200 <= answer[0] < 300:
            self.ledger.versioned(answer[1])
            self.ledger.count("reimported")

    def renew(self, rng):
        # Mostly private certificates; now and then a public one, whose renewal is an ACME
        # order run inside the request, perhaps while the scheduler renews it too.
        kinds = (ACME,) if rng.random() < 0.15 else (SHORT, LONG)
        cert = self.ledger.pick(rng, lambda c: c.kind in kinds and c.active and c.versions)
        if cert is None:
            return
        answer, _ = self._send(f"renew-{cert.kind}", "POST", f"/v1/certificates/{cert.id}/renew", None)
        if answer and 200 <= answer[0] < 300:
            self.ledger.versioned(answer[1])
            self.ledger.count("renewed by request")

    def acme(self, rng):
        if self._active(ACME) >= self.options.acme_cap:
            return self._retire(rng, ACME)
        name = f"acme-{self._n()}.torture.test"
        body = {"domains": [name], "issuer": "pebble", "validation": "http"}
        self._create("acme", ACME, [name], "/v1/certificates", body, "ACME requests")

    def export(self, rng):
        cert = self.ledger.pick(rng, lambda c: c.kind != SIGNED and not c.gone and c.versions)
        if cert is None:
            return
        body = {"passphrase": "torture export passphrase", "format": rng.choice(["pem", "pkcs12"])}
        self._send("export", "POST", f"/v1/certificates/{cert.id}/export", body)

    def _active(self, kind):
        with self.ledger.lock:
            return sum(1 for c in self.ledger.certs.values() if c.kind == kind and c.active)

    def _retire(self, rng, kind):
        """Revokes or deletes one certificate of `kind` that has served: a short-lived one
        renewed a few times, an ACME one issued (none yet: nothing happens)."""
        what = rng.choice(["revoke", "delete"])
        served = 3 if kind == SHORT else 1
        cert = self.ledger.claim(rng, lambda c: c.kind == kind and len(c.versions) >= served,
                                 what, self.local.epoch)
        if cert is None:
            return
        if what == "revoke":
            answer, _ = self._send(f"revoke-{kind}", "POST", f"/v1/certificates/{cert.id}/revoke",
                                   {"reason": "superseded"})
        else:
            answer, _ = self._send(f"delete-{kind}", "DELETE", f"/v1/certificates/{cert.id}", None)
        if answer is None or answer[0] >= 500:
            return  # unknown: the next restart's check resolves it
        done = 200 <= answer[0] < 300
        self.ledger.settle(cert, what, done)
        if done:
            self.ledger.count("revoked" if what == "revoke" else "deleted")
