"""The real peers of the torture run: Pebble (Debian's `pebble`, Let's Encrypt's test CA) and
`pebble-challtestsrv` as Pebble's DNS (every name resolves to 127.0.0.1), each on free
loopback ports, with its log in the run directory. The same settings as the integration tests'
harness (tests/common/peers.rs; the facts behind them are in /work/shared/PEERS.md).

Processes are stopped by their pid, never by name.
"""

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.request

_handed_out = set()


def free_port():
    """A loopback port free for TCP and UDP right now, never the same twice in this run."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            if port in _handed_out:
                continue
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no loopback port free for TCP and UDP")


def openssl(args, cwd=None, stdin=None):
    """Runs `openssl args`; returns stdout; raises with its output when it fails."""
    out = subprocess.run(["openssl", *args], cwd=cwd, input=stdin, capture_output=True)
    if out.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{out.stdout.decode()}{out.stderr.decode()}")
    return out.stdout.decode()


def tcp_answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Process:
    """A spawned peer with stdout and stderr appended to `log`; `stop` SIGKILLs it by pid."""

    def __init__(self, name, argv, log, env=None, cwd=None):
        self.name, self.log = name, log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, cwd=cwd
            )

    @property
    def pid(self):
        return self.popen.pid

    def wait_ready(self, ready, timeout=30):
        deadline = time.monotonic() + timeout
        while not ready():
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} (pid {self.pid}) not ready in {timeout} s; see {self.log}")
            time.sleep(0.05)

    def stop(self):
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait()


def tls_files(directory):
    """A CA and a leaf for localhost, 127.0.0.1 and ::1 signed by it, for Pebble's HTTPS
    listener (Debian ships none): returns (ca_pem_path, cert_path, key_path)."""
    ca_key, ca = os.path.join(directory, "tls-ca.key"), os.path.join(directory, "tls-ca.pem")
    key, csr = os.path.join(directory, "tls-key.pem"), os.path.join(directory, "tls.csr")
    cert, ext = os.path.join(directory, "tls-cert.pem"), os.path.join(directory, "tls.ext")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl(["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "30",
             "-subj", "/CN=certkeeper torture: Pebble TLS CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    openssl(["req", "-new", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"])
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n")
    openssl(["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-days", "30", "-extfile", ext, "-out", cert])
    return ca, cert, key


class ChallTestSrv:
    """`pebble-challtestsrv` as a mock DNS server: A 127.0.0.1 for every name, no AAAA (so
    Pebble's VA connects to the daemon's IPv4 HTTP-01 listener), no challenge servers."""

    def __init__(self, directory):
        self.dns_port, self.management_port = free_port(), free_port()
        self.process = Process(
            "pebble-challtestsrv",
            ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{self.dns_port}",
             "-management", f"127.0.0.1:{self.management_port}",
             "-http01", "", "-https01", "", "-tlsalpn01", "", "-defaultIPv6", ""],
            os.path.join(directory, "challtestsrv.log"),
        )
        # It keeps running when a bind fails: the management port answering is the sign.
        self.process.wait_ready(lambda: tcp_answers(self.management_port))

    def stop(self):
        self.process.stop()


class Pebble:
    """Pebble with badNonce at `nonce_reject` percent, no validation sleep, no authorization
    reuse, and certificates valid `validity` seconds. All its state is in memory: it runs for
    the whole torture run (the daemon's account and orders stay valid across daemon kills)."""

    def __init__(self, directory, dns_port, nonce_reject, validity):
        self.directory = os.path.join(directory, "pebble")
        os.makedirs(self.directory, exist_ok=True)
        self.tls_ca, cert, key = tls_files(self.directory)
        listen, management = free_port(), free_port()
        self.http_port, tls_port = free_port(), free_port()
        settings = {
            "listenAddress": f"127.0.0.1:{listen}",
            "managementListenAddress": f"127.0.0.1:{management}",
            "certificate": cert,
            "privateKey": key,
            "httpPort": self.http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            "externalAccountMACKeys": {},
            "domainBlocklist": [],
            "certificateValidityPeriod": validity,
        }
        config = os.path.join(self.directory, "pebble-config.json")
        with open(config, "w") as f:
            json.dump({"pebble": settings}, f, indent=2)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
        env.update(PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT=str(nonce_reject),
                   PEBBLE_AUTHZREUSE="0")
        self.log = os.path.join(self.directory, "pebble.log")
        self.process = Process(
            "pebble", ["pebble", "-config", config, "-dnsserver", f"127.0.0.1:{dns_port}"],
            self.log, env=env, cwd=self.directory,
        )
        self.directory_url = f"https://127.0.0.1:{listen}/dir"
        self.management_url = f"https://127.0.0.1:{management}"
        self._tls = ssl.create_default_context(cafile=self.tls_ca)
        self._names = {}  # serial (hex, lower case, no leading zeros) -> SAN DNS names
        self._log_offset = 0  # how far `issued` has read Pebble's log
        self.process.wait_ready(self._ready)

    def _ready(self):
        try:
            return "newOrder" in self.get(self.directory_url) and self.get("/roots/0")
        except OSError:
            return False

    def get(self, url):
        if url.startswith("/"):
            url = self.management_url + url
        with urllib.request.urlopen(url, context=self._tls, timeout=10) as response:
            return response.read().decode()

    def issued(self):
        """Every certificate Pebble has issued so far: {serial: (dns names...)}, from its log
        and its management API (the log names the serial, the API gives the certificate)."""
        with open(self.log, "rb") as f:
            f.seek(self._log_offset)
            data = f.read()
        # Only whole lines: the next call reads a line Pebble is still writing.
        data = data[: data.rfind(b"\n") + 1]
        self._log_offset += len(data)
        text = data.decode(errors="replace")
        for serial in re.findall(r"Issued certificate serial ([0-9a-fA-F]+)", text):
            serial = serial.lower().lstrip("0")
            if serial not in self._names:
                status = json.loads(self.get(f"/cert-status-by-serial/{serial}"))
                self._names[serial] = dns_names(status["Certificate"])
        return dict(self._names)

    def status(self, serial):
        """Pebble's status of a certificate it issued: "Valid" or "Revoked"."""
        return json.loads(self.get(f"/cert-status-by-serial/{serial}"))["Status"]

    def stop(self):
        self.process.stop()


def dns_names(cert_pem):
    """The DNS names of a certificate's subjectAltName, sorted."""
    text = openssl(["x509", "-noout", "-ext", "subjectAltName"], stdin=cert_pem.encode())
    return tuple(sorted(re.findall(r"DNS:([^,\s]+)", text)))
