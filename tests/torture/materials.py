"""Keys, CSRs and certificates made outside the daemon with the `openssl` CLI: a pool of CSRs
for `sign`, and certificates from an outside CA (a root and an intermediate of the run's own)
for `import`, made ahead by a background thread so imports do not wait for openssl."""

import os
import queue
import secrets
import threading

from peers import openssl

CA_EXT = ("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
          "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n")
LEAF_EXT = ("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{name}\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
P256 = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
P384 = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]


def read(path):
    with open(path) as f:
        return f.read()


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def public_key_of_csr(csr_pem):
    return openssl(["req", "-noout", "-pubkey"], stdin=csr_pem.encode())


class Materials:
    def __init__(self, directory, csr_count=8, leaf_days=20):
        self.directory = os.path.join(directory, "materials")
        os.makedirs(self.directory, exist_ok=True)
        self.leaf_days = leaf_days
        self._outside_ca()
        self.csrs = [self._csr(i) for i in range(csr_count)]  # (csr_pem, public_key_pem)
        self._ready = queue.Queue(maxsize=40)
        self._counter = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._produce, daemon=True).start()

    def _path(self, name):
        return os.path.join(self.directory, name)

    def _outside_ca(self):
        root_key, root, int_key, int_csr = map(self._path, ["root.key", "root.pem", "int.key", "int.csr"])
        self.int_pem, self.int_key = self._path("int.pem"), int_key
        write(self._path("ca.ext"), CA_EXT)
        openssl(["genpkey", *P256, "-out", root_key])
        openssl(["req", "-x509", "-new", "-key", root_key, "-subj", "/CN=torture outside root CA",
                 "-days", "3650", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", root])
        openssl(["genpkey", *P256, "-out", int_key])
        openssl(["req", "-new", "-key", int_key, "-subj", "/CN=torture outside intermediate CA",
                 "-out", int_csr])
        openssl(["x509", "-req", "-in", int_csr, "-CA", root, "-CAkey", root_key,
                 "-set_serial", "0x" + secrets.token_hex(16), "-days", "1825",
                 "-extfile", self._path("ca.ext"), "-out", self.int_pem])
        self.chain = read(self.int_pem) + read(root)

    def _csr(self, i):
        key, csr = self._path(f"sign{i}.key"), self._path(f"sign{i}.csr")
        openssl(["genpkey", *P256, "-out", key])
        name = f"sign{i}.torture.internal"
        openssl(["req", "-new", "-key", key, "-subj", f"/CN={name}",
                 "-addext", f"subjectAltName=DNS:{name}", "-out", csr])
        pem = read(csr)
        return pem, public_key_of_csr(pem)

    def leaf(self, name, kind=P256):
        """A new key and a certificate for `name` from the outside intermediate, valid
        `leaf_days` days: {"certificate", "private_key", "chain"} PEM."""
        with self._lock:
            self._counter += 1
            stem = self._path(f"leaf{self._counter}")
        write(stem + ".ext", LEAF_EXT.format(name=name))
        openssl(["genpkey", *kind, "-out", stem + ".key"])
        openssl(["req", "-new", "-key", stem + ".key", "-subj", f"/CN={name}", "-out", stem + ".csr"])
        openssl(["x509", "-req", "-in", stem + ".csr", "-CA", self.int_pem, "-CAkey", self.int_key,
                 "-set_serial", "0x" + secrets.token_hex(16), "-days", str(self.leaf_days),
                 "-extfile", stem + ".ext", "-out", stem + ".pem"])
        leaf = {"certificate": read(stem + ".pem"), "private_key": read(stem + ".key"),
                "chain": self.chain}
        for suffix in (".ext", ".key", ".csr", ".pem"):
            os.unlink(stem + suffix)
        return leaf

    def _produce(self):
        """Keeps a few import leaves ready; their names are given when they are taken."""
        n = 0
        while not self._stop.is_set():
            n += 1
            name = f"imp-{n}.torture.example"
            kind = P384 if n % 5 == 0 else P256
            try:
                made = (name, self.leaf(name, kind))
            except RuntimeError:
                if self._stop.is_set():
                    return
                raise
            while not self._stop.is_set():
                try:
                    self._ready.put(made, timeout=1)
                    break
                except queue.Full:
                    continue

    def next_import(self, timeout=10):
        """(dns name, leaf) for a new import."""
        return self._ready.get(timeout=timeout)

    def stop(self):
        self._stop.set()
