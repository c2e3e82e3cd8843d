"""Private PostgreSQL, Redis and Kafka servers for tests that stop, kill, restart or lock down a
service.

The shared services of `.devstack` must never be stopped or reconfigured (other tests use them at
the same time), so a fault or security test starts its own instance here, on free loopback
ports, with its data and log in a folder of its own (a pytest `tmp_path`), and may then
`stop()`, `kill()` and `restart()` it. The data folder survives a restart, as a real server's
disk would.

    with PrivateRedis(tmp_path / "redis") as redis_server:
        settings = settings.model_copy(update={"redis_url": SecretStr(redis_server.url)})
        ...
        redis_server.stop()        # SIGTERM (PostgreSQL: SIGINT, a fast shutdown), wait for exit
        redis_server.restart()     # same port, same data; returns once healthy

`start()` returns once the server answers; if it does not within `start_timeout`, the process
is killed and ServiceFailed carries the last lines of its log. Every method is blocking; from
async code call it with `await asyncio.to_thread(server.restart)` so the event loop (and the
relay in it) keeps running meanwhile. The Kafka broker runs from the jars `devstack/stack.sh`
fetched into `.devstack/kafka-libs-<version>/` (KRaft, one node, broker and controller).

Locked-down variants (security tests): `TestCA` makes a certificate authority and server
certificates with openssl; `PrivatePostgres(tls=...)` accepts only TLS connections with
scram-sha-256 passwords; `PrivateRedis(tls=..., users=...)` listens on TLS only, with the
default user disabled and ACL users; `PrivateKafka(security=KafkaSecurity(...))` has a SASL_SSL
(SCRAM-SHA-512) client listener, an mTLS controller listener and the standard authorizer with
no access unless an ACL grants it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import redis

from flowproof.core.http import free_port

ROOT = Path(__file__).resolve().parent.parent
DEVSTACK = Path(os.environ.get("DEVSTACK_DIR", ROOT / ".devstack"))
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
WRONG_HOST = "flowproof-wrong-host.invalid"  # what a misnamed test certificate is issued for


class ServiceFailed(RuntimeError):
    """A private service did not start (the message ends with its log's last lines)."""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _run(command: Sequence[str], what: str, **kwargs: Any) -> None:
    """Run a set-up command; ServiceFailed with its output if it fails."""
    result = subprocess.run(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=120,
        check=False,
        **kwargs,
    )
    if result.returncode != 0:
        output = result.stdout.decode("utf-8", "replace")[-4000:]
        raise ServiceFailed(f"{what} failed (exit {result.returncode}):\n{output}")


# --- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    """A PEM certificate, its unencrypted PKCS#8 private key and the CA certificate that signed it.

    `chain` holds the key followed by the certificate: Kafka's PEM keystore format.
    """

    cert: Path
    key: Path
    ca: Path
    chain: Path


class TestCA:
    """A throw-away certificate authority (EC P-256, valid two days) made with openssl."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, directory: Path, name: str = "flowproof test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = directory / "ca.key"
        self.cert = directory / "ca.pem"
        _new_key(self.key)
        _run(
            [
                "openssl", "req", "-x509", "-new", "-key", str(self.key), "-out", str(self.cert),
                "-days", "2", "-subj", f"/CN={name}", "-sha256",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            ],
            "openssl: making the test CA",
        )  # fmt: skip

    def issue(self, name: str, hosts: Sequence[str] = LOOPBACK_HOSTS) -> Certificate:
        """A certificate for `hosts` (IP addresses or DNS names), for server and client use."""
        stem = self.directory / name
        key, csr, cert = (
            stem.with_suffix(".key"),
            stem.with_suffix(".csr"),
            stem.with_suffix(".pem"),
        )
        extfile = stem.with_suffix(".ext")
        names = ",".join(
            f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts
        )
        extfile.write_text(
            f"subjectAltName={names}\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n",
            encoding="utf-8",
        )
        _new_key(key)
        _run(
            ["openssl", "req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={name}"],
            f"openssl: request for {name}",
        )
        _run(
            [
                "openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.cert),
                "-CAkey", str(self.key), "-CAcreateserial", "-out", str(cert), "-days", "2",
                "-sha256", "-extfile", str(extfile),
            ],
            f"openssl: signing {name}",
        )  # fmt: skip
        chain = stem.with_suffix(".chain.pem")
        chain.write_bytes(key.read_bytes() + cert.read_bytes())
        chain.chmod(0o600)
        return Certificate(cert=cert, key=key, ca=self.cert, chain=chain)


def _new_key(path: Path) -> None:
    _run(
        [
            "openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", str(path),
        ],
        "openssl: making a key",
    )  # fmt: skip
    path.chmod(0o600)


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on, from the kernel's tables (/proc), whatever the
    process's configuration says."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text("ascii").splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN, and this process's
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def plaintext_reply(port: int, request: bytes, timeout: float = 3.0) -> bytes:
    """What a loopback server sends back to `request` sent in plain text, up to 4 KiB, until it
    closes the connection or `timeout` passes; a reset counts as no answer."""
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        with contextlib.suppress(OSError):
            sock.sendall(request)
            while len(reply) < 4096 and (chunk := sock.recv(4096)):
                reply += chunk
    return reply


def is_tls_alert(reply: bytes) -> bool:
    """A TLS alert record (content type 21, version 3.x): a TLS server's only word to a client
    that does not speak TLS."""
    return len(reply) >= 5 and reply[0] == 0x15 and reply[1] == 0x03


def _client_tls(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


# --- the life cycle every private server shares ----------------------------------------------


class PrivateService:
    """A server process this test owns: start, stop (SIGTERM), kill (SIGKILL), restart."""

    name = "service"
    stop_signal = signal.SIGTERM

    def __init__(self, workdir: Path, *, start_timeout: float = 60.0) -> None:
        self.workdir = workdir
        self.start_timeout = start_timeout
        self.log_path = workdir / "log" / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        (workdir / "log").mkdir(parents=True, exist_ok=True)
        (workdir / "data").mkdir(parents=True, exist_ok=True)

    # --- what a subclass provides ------------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _healthy(self) -> bool:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Set-up before the first start (configuration files, storage format)."""

    def _popen_kwargs(self) -> dict[str, Any]:
        """Extra arguments of the server's Popen (e.g. the OS user it runs as)."""
        return {}

    # --- life cycle ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    def start(self) -> Self:
        """Start the server and wait until it is healthy (ServiceFailed with the log if not)."""
        if self.running:
            return self
        self.launch()
        self._wait_healthy()
        return self

    def launch(self) -> None:
        """Start the server process without waiting for it to be healthy (nodes of a cluster
        become healthy only once enough of them run); `wait_healthy()` then waits."""
        if self.running:
            return
        self._prepare()
        out = (self.workdir / "log" / f"{self.name}.stdout").open("ab")
        try:
            self._process = subprocess.Popen(
                self._command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of pytest does not hit it first
                **self._popen_kwargs(),
            )
        finally:
            out.close()

    def wait_healthy(self) -> None:
        """Wait until the launched server is healthy (ServiceFailed with the log if not)."""
        self._wait_healthy()

    def stop(self, timeout: float = 60.0) -> None:
        """Ask the server to shut down cleanly and wait for its exit (SIGKILL after `timeout`)."""
        self._signal(self.stop_signal, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to flush or say goodbye."""
        self._signal(signal.SIGKILL, 10.0)

    def restart(self) -> Self:
        """Stop (if running) and start again on the same ports with the same data."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Kill the process if it still runs (the folder is the test's tmp_path to remove)."""
        if self.running:
            self.kill()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def listening_ports(self) -> set[int]:
        """Every TCP port the running server listens on (from /proc; empty when stopped)."""
        pid = self.pid
        return listening_ports(pid) if pid is not None else set()

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def _signal(self, signum: signal.Signals, timeout: float) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signum)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not self._healthy():
            process = self._process
            exited = process is not None and process.poll() is not None
            if exited or time.monotonic() > deadline:
                self.close()
                why = "exited" if exited else f"was not healthy within {self.start_timeout} s"
                raise ServiceFailed(
                    f"private {self.name} in {self.workdir} {why}; last lines of "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.1)


# --- PostgreSQL ------------------------------------------------------------------------------


def postgres_bin() -> Path:
    """The newest installed PostgreSQL server binaries (Debian's layout, as devstack uses)."""
    found = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "postgres").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise ServiceFailed(
            "no PostgreSQL server in /usr/lib/postgresql/*/bin: run `make stack-up`"
        )
    return found[-1]


class PrivatePostgres(PrivateService):
    """A PostgreSQL server of its own (initdb on first start), loopback only, scram-sha-256.

    With `tls`, `ssl = on` with that certificate and pg_hba.conf has only `hostssl` lines: a
    connection without TLS is refused by the server. The superuser is `postgres` with
    `password` (random by default). When the tests run as root, the server runs as the
    `postgres` OS user (initdb refuses root); if that user cannot reach `workdir`, the data
    lives in a folder under /var/tmp instead (removed by `close()`), as devstack/stack.sh does.
    `stop()` is a fast shutdown (SIGINT): the default SIGTERM would wait for every client.
    """

    name = "postgres"
    stop_signal = signal.SIGINT
    superuser = "postgres"

    def __init__(
        self,
        workdir: Path,
        *,
        tls: Certificate | None = None,
        password: str | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        super().__init__(workdir, start_timeout=start_timeout)
        self.log_path = workdir / "log" / f"{self.name}.stdout"  # the server logs to stderr
        self.port = free_port()
        self.tls = tls
        self.password = password or secrets.token_hex(16)
        self.bin = postgres_bin()
        self._os_user = "postgres" if os.geteuid() == 0 else None
        self._outside: Path | None = None
        self.base = self._base_dir()
        self.pgdata = self.base / "pgdata"

    def _base_dir(self) -> Path:
        if self._os_user is None or self._reachable(self.workdir):
            return self.workdir / "data"
        self._outside = Path(tempfile.mkdtemp(prefix="flowproof-private-pg-", dir="/var/tmp"))
        shutil.chown(self._outside, self._os_user, self._os_user)
        return self._outside

    def _reachable(self, path: Path) -> bool:
        result = subprocess.run(
            ["test", "-x", str(path)], check=False, **self._as_os_user(), timeout=30
        )
        return result.returncode == 0

    def _as_os_user(self) -> dict[str, Any]:
        if self._os_user is None:
            return {}
        return {"user": self._os_user, "group": self._os_user, "extra_groups": []}

    def dsn(
        self,
        user: str | None = None,
        password: str | None = None,
        database: str = "postgres",
        *,
        sslmode: str = "verify-full",
        ca: Path | None = None,
    ) -> str:
        """A postgresql:// DSN; with TLS it verifies the server against `ca` (default: ours)."""
        user = user or self.superuser
        password = self.password if password is None and user == self.superuser else password
        auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
        dsn = f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"
        if self.tls is None:
            return dsn
        root = ca or self.tls.ca
        return f"{dsn}?sslmode={sslmode}&sslrootcert={quote(str(root), safe='/')}"

    @property
    def url(self) -> str:
        """The superuser's DSN to the `postgres` database."""
        return self.dsn()

    def libpq_env(self, user: str | None = None, password: str | None = None) -> dict[str, str]:
        """PG* variables for psql and friends (the password in PGPASSWORD, never in argv)."""
        env = {
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.port),
            "PGUSER": user or self.superuser,
            "PGPASSWORD": password if password is not None else self.password,
            "PGDATABASE": "postgres",
            "PGCONNECT_TIMEOUT": "10",
        }
        if self.tls is not None:
            env.update(PGSSLMODE="verify-full", PGSSLROOTCERT=str(self.tls.ca))
        return env

    def close(self) -> None:
        super().close()
        if self._outside is not None:
            shutil.rmtree(self._outside, ignore_errors=True)
            self._outside = None

    def _popen_kwargs(self) -> dict[str, Any]:
        return self._as_os_user()

    def _command(self) -> list[str]:
        return [str(self.bin / "postgres"), "-D", str(self.pgdata)]

    def _healthy(self) -> bool:
        result = subprocess.run(
            [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            check=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
        )
        return result.returncode == 0

    def _prepare(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n", encoding="utf-8")
        if self._os_user is not None:
            shutil.chown(pwfile, self._os_user, self._os_user)
            shutil.chown(self.base, self._os_user, self._os_user)
        pwfile.chmod(0o600)
        _run(
            [
                str(self.bin / "initdb"), "-D", str(self.pgdata), "-U", self.superuser,
                "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8",
                "--no-sync",
            ],
            "initdb",
            **self._as_os_user(),
        )  # fmt: skip
        pwfile.unlink()
        conf = [
            "# flowproof private test server: loopback only, throw-away data (fsync off)",
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.pgdata}'",
            "max_connections = 100",
            "fsync = off",
            "full_page_writes = off",
            "synchronous_commit = off",
            "password_encryption = 'scram-sha-256'",
            "log_destination = 'stderr'",
            "logging_collector = off",
        ]
        method = "host"
        if self.tls is not None:
            method = "hostssl"
            for source, target in ((self.tls.cert, "server.crt"), (self.tls.key, "server.key")):
                shutil.copyfile(source, self.pgdata / target)
                (self.pgdata / target).chmod(0o600)
                if self._os_user is not None:
                    shutil.chown(self.pgdata / target, self._os_user, self._os_user)
            conf += ["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'"]
        with (self.pgdata / "postgresql.conf").open("a", encoding="utf-8") as out:
            out.write("\n".join(conf) + "\n")
        # Only these lines: no `local` trust, and with TLS nothing that accepts a plain connection.
        (self.pgdata / "pg_hba.conf").write_text(
            f"{method} all all 127.0.0.1/32 scram-sha-256\n", encoding="utf-8"
        )


# --- Redis -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisUser:
    """An ACL user: `rules` are what follows `user <name> on <password>` in an ACL file."""

    name: str
    password: str
    rules: str


class PrivateRedis(PrivateService):
    """redis-server on a free loopback port; AOF on with fsync always, so a kill loses nothing
    the server acknowledged.

    With `tls`, it listens on TLS only (plain port 0). With `users`, the default user is
    disabled and only those users (plus an admin user the health check and `admin_url` use)
    can log in.
    """

    name = "redis"

    def __init__(
        self,
        workdir: Path,
        *,
        tls: Certificate | None = None,
        users: Sequence[RedisUser] = (),
        start_timeout: float = 30.0,
        replica_of: PrivateRedis | None = None,
        config: Sequence[str] = (),
        client_auth: bool = False,
    ) -> None:
        super().__init__(workdir, start_timeout=start_timeout)
        self.port = free_port()
        self.tls = tls
        # With TLS: clients must present a certificate from the CA (`tls-auth-clients yes`);
        # the health check and `ask` present the server's own.
        self.client_auth = client_auth
        self.replica_of = replica_of
        self.config = tuple(config)  # more `--name value` arguments of redis-server
        self.users = tuple(users)
        self.admin = (
            RedisUser("flowproof-test-admin", secrets.token_hex(16), "~* &* +@all")
            if self.users
            else None
        )
        self._aclfile = workdir / "users.acl"

    @property
    def url(self) -> str:
        return self.url_for(None)

    @property
    def admin_url(self) -> str:
        """A URL of a user allowed everything (the default user when there are no users)."""
        return self.url_for(self.admin)

    def url_for(self, user: RedisUser | None) -> str:
        """redis:// (or rediss:// with TLS) URL, with `user`'s name and password if given."""
        scheme = "rediss" if self.tls is not None else "redis"
        auth = f"{quote(user.name, safe='')}:{quote(user.password, safe='')}@" if user else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        command = [
            shutil.which("redis-server") or "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.workdir / "data"),
            "--logfile", str(self.log_path),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--protected-mode", "yes",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.tls is not None:
            command[command.index("--port") + 1] = "0"
            command += [
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert),
                "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca),
                "--tls-auth-clients", "yes" if self.client_auth else "no",
            ]  # fmt: skip
        if self.admin is not None:
            command += ["--aclfile", str(self._aclfile)]
        if self.replica_of is not None:
            command += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        if self.tls is not None:  # replicas and the cluster bus speak TLS too
            command += ["--tls-replication", "yes"]
        return [*command, *self.config]

    def ask(self, *command: str) -> Any:
        """This server's reply to one command (None when it does not answer)."""
        return redis_ask(
            self.port,
            *command,
            ca=self.tls.ca if self.tls else None,
            client=self.tls if self.tls and self.client_auth else None,
        )

    def _prepare(self) -> None:
        if self.admin is None:
            return
        lines = ["user default off resetkeys resetchannels -@all"]
        for user in (self.admin, *self.users):
            digest = hashlib.sha256(user.password.encode()).hexdigest()
            lines.append(f"user {user.name} reset on #{digest} {user.rules}")
        self._aclfile.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _healthy(self) -> bool:
        hello = b"PING\r\n"
        expected = b"+PONG"
        if self.admin is not None:
            name, password = self.admin.name.encode(), self.admin.password.encode()
            hello = b"AUTH " + name + b" " + password + b"\r\n" + hello
            expected = b"+OK\r\n+PONG"
        try:
            with contextlib.ExitStack() as stack:
                sock = stack.enter_context(
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
                )
                if self.tls is not None:
                    context = _client_tls(self.tls.ca)
                    # Up is up: a test may give the server a certificate for another host name
                    # on purpose (the clients under test must refuse it, not this check).
                    context.check_hostname = False
                    if self.client_auth:
                        context.load_cert_chain(self.tls.cert, self.tls.key)
                    sock = stack.enter_context(
                        context.wrap_socket(sock, server_hostname="127.0.0.1")
                    )
                sock.sendall(hello)
                reply = b""
                while len(reply) < len(expected) and (chunk := sock.recv(64)):
                    reply += chunk
                return reply.startswith(expected)
        except OSError:
            return False


class PrivateSentinel(PrivateService):
    """redis-server in Sentinel mode watching one primary (quorum 1), tuned to notice a dead
    primary within a second and to promote its replica at once."""

    name = "sentinel"

    def __init__(
        self,
        workdir: Path,
        primary: PrivateRedis,
        *,
        service: str = "flowproof",
        tls: Certificate | None = None,
        client_auth: bool = False,
    ) -> None:
        super().__init__(workdir, start_timeout=30.0)
        self.port = free_port()
        self.primary = primary
        self.service = service
        self.tls = tls  # TLS only, to its clients and to the servers it watches
        self.client_auth = client_auth  # clients must present a certificate from the CA
        self._conf = workdir / "sentinel.conf"

    def _prepare(self) -> None:
        if self._conf.exists():
            return  # Sentinel rewrites its file with what it learnt: keep it over a restart
        name = self.service
        tls = ""
        if self.tls is not None:
            tls = (
                f"port 0\ntls-port {self.port}\ntls-cert-file {self.tls.cert}\n"
                f"tls-key-file {self.tls.key}\ntls-ca-cert-file {self.tls.ca}\n"
                f"tls-auth-clients {'yes' if self.client_auth else 'no'}\n"
                "tls-replication yes\n"
            )
        self._conf.write_text(
            f"port {self.port}\n"
            f"{tls}"
            "bind 127.0.0.1\n"
            f"dir {self.workdir / 'data'}\n"
            f"logfile {self.log_path}\n"
            f"sentinel monitor {name} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {name} 1000\n"
            f"sentinel failover-timeout {name} 5000\n"
            f"sentinel parallel-syncs {name} 1\n",
            encoding="utf-8",
        )

    def _command(self) -> list[str]:
        return [shutil.which("redis-server") or "redis-server", str(self._conf), "--sentinel"]

    def _healthy(self) -> bool:
        return self.primary_port() is not None

    def primary_port(self) -> int | None:
        """The port of the primary this Sentinel names now (None when it does not answer)."""
        reply = self.ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(reply[1]) if isinstance(reply, list | tuple) and len(reply) == 2 else None

    def ask(self, *command: str) -> Any:
        """This Sentinel's reply to one command (None when it does not answer)."""
        return redis_ask(
            self.port,
            *command,
            ca=self.tls.ca if self.tls else None,
            client=self.tls if self.tls and self.client_auth else None,
        )


class ServerGroup:
    """Servers started and closed together (`start` and `close` from the subclass); a context
    manager that closes what started when the start fails."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ReplicatedRedis(ServerGroup):
    """A private Redis primary with one replica and a Sentinel: `url` is the
    redis+sentinel:// URL of flowproof's clients, `primary_url` a direct URL of the primary
    (the one of the start; `current` follows the promotions). `config` goes to both servers.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        config: Sequence[str] = (),
        tls: Certificate | None = None,
        client_auth: bool = False,
    ) -> None:
        self.primary = PrivateRedis(
            workdir / "primary", config=config, tls=tls, client_auth=client_auth
        )
        self.replica = PrivateRedis(
            workdir / "replica",
            replica_of=self.primary,
            config=config,
            tls=tls,
            client_auth=client_auth,
        )
        self.sentinel = PrivateSentinel(
            workdir / "sentinel", self.primary, tls=tls, client_auth=client_auth
        )
        self.tls = tls

    @property
    def url(self) -> str:
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        return f"{scheme}://127.0.0.1:{self.sentinel.port}/{self.sentinel.service}/0"

    def current(self) -> PrivateRedis:
        """The server the Sentinel names primary now."""
        port = self.sentinel.primary_port()
        return self.replica if port == self.replica.port else self.primary

    def start(self) -> Self:
        self.primary.start()
        self.replica.start()
        _wait_for(
            lambda: _replica_in_sync(self.replica),
            30.0,
            f"the replica in {self.replica.workdir} in sync",
        )
        self.sentinel.start()
        _wait_for(
            lambda: _sentinel_knows_replica(self.sentinel),
            30.0,
            "the Sentinel knowing the replica",
        )
        return self

    def close(self) -> None:
        for server in (self.sentinel, self.replica, self.primary):
            server.close()


class PrivateRedisCluster(ServerGroup):
    """A Redis Cluster of private servers on loopback: `primaries` primaries (the hash slots
    spread evenly) with `replicas` replicas each, made with `redis-cli --cluster create`. A
    primary killed is replaced by its replica within about `node_timeout_ms` (the other
    primaries' majority votes). `url` is the redis+cluster:// URL of flowproof's clients."""

    def __init__(
        self,
        workdir: Path,
        *,
        primaries: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 1000,
        config: Sequence[str] = (),
        tls: Certificate | None = None,
        client_auth: bool = False,
    ) -> None:
        self.replicas = replicas
        self.tls = tls
        self.client_auth = client_auth
        cluster = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            # A replica takes over however long ago it last heard from its primary.
            "--cluster-replica-validity-factor", "0",
            *(["--tls-cluster", "yes"] if tls else []),
            *config,
        ]  # fmt: skip
        # The cluster bus on a free port of its own (by default it is the port + 10000).
        self.nodes = [
            PrivateRedis(
                workdir / f"node-{n + 1}",
                config=[*cluster, "--cluster-port", str(free_port())],
                tls=tls,
                client_auth=client_auth,
            )
            for n in range(primaries * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        scheme = "rediss+cluster" if self.tls else "redis+cluster"
        return f"{scheme}://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def primaries(self) -> list[PrivateRedis]:
        """The nodes that are primaries now (those that answer)."""
        return [n for n in self.nodes if n.running and _role(n) == "master"]

    def start(self) -> Self:
        for node in self.nodes:
            node.start()
        if not all(_cluster_state(n) == "ok" for n in self.nodes):
            tls = ["--tls", "--cacert", str(self.tls.ca)] if self.tls else []
            if self.tls and self.client_auth:
                tls += ["--cert", str(self.tls.cert), "--key", str(self.tls.key)]
            _run(
                [
                    shutil.which("redis-cli") or "redis-cli", *tls, "--cluster", "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-replicas", str(self.replicas), "--cluster-yes",
                ],
                "redis-cli --cluster create",
            )  # fmt: skip
        _wait_for(
            lambda: all(_cluster_state(n) == "ok" for n in self.nodes),
            60.0,
            "every cluster node saying cluster_state:ok",
        )
        _wait_for(
            lambda: all(_replica_in_sync(n) for n in self.nodes if _role(n) == "slave"),
            60.0,
            "every replica in sync with its primary",
        )
        return self

    def close(self) -> None:
        for node in self.nodes:
            node.close()


def _role(server: PrivateRedis) -> str | None:
    info = server.ask("INFO", "replication")
    return str(info["role"]) if isinstance(info, dict) else None


def _cluster_state(server: PrivateRedis) -> str | None:
    reply = server.ask("CLUSTER", "INFO")
    text = reply.decode() if isinstance(reply, bytes) else str(reply or "")
    for line in text.splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return None


def redis_ask(
    port: int,
    *command: str,
    timeout: float = 2.0,
    ca: Path | None = None,
    client: Certificate | None = None,
) -> Any:
    """A loopback Redis's (or Sentinel's) reply to one command; None when it does not answer.
    With `ca`, over TLS (the certificate checked against it, not the host name: up is up),
    presenting `client`'s certificate if given."""
    tls: dict[str, Any] = (
        {"ssl": True, "ssl_ca_certs": str(ca), "ssl_check_hostname": False} if ca else {}
    )
    if client is not None:
        tls |= {"ssl_certfile": str(client.cert), "ssl_keyfile": str(client.key)}
    client = redis.Redis(port=port, socket_timeout=timeout, socket_connect_timeout=timeout, **tls)
    try:
        return client.execute_command(*command)
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


def _replica_in_sync(replica: PrivateRedis) -> bool:
    info = replica.ask("INFO", "replication")
    return isinstance(info, dict) and info.get("master_link_status") == "up"


def _sentinel_knows_replica(sentinel: PrivateSentinel) -> bool:
    return bool(sentinel.ask("SENTINEL", "REPLICAS", sentinel.service))


def _wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise ServiceFailed(f"{what}: not within {within:.0f} s")
        time.sleep(0.1)


# --- Kafka -----------------------------------------------------------------------------------


def kraft_cluster_id() -> str:
    """16 random bytes in URL-safe base64 without padding, never starting with "-": the storage
    tool's argument parser would take such an id for an option (Kafka's own Uuid.randomUuid()
    draws again in that case, and so does this)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def kafka_libs() -> Path:
    """The folder of the Kafka broker's jars that `make stack-up` fetched."""
    found = sorted(DEVSTACK.glob("kafka-libs-*/.complete"))
    if not found:
        raise ServiceFailed(
            f"no Kafka jars in {DEVSTACK}/kafka-libs-*/: run `make stack-up` once to fetch them"
        )
    return found[-1].parent


@dataclass(frozen=True)
class KafkaSecurity:
    """SASL_SSL for clients (SCRAM-SHA-512) and ACLs; the users are made at storage format time.

    `admin` is a super user, as is the broker itself (its certificate's principal, on the mTLS
    controller listener). Anyone else may do only what an ACL grants.
    """

    certificate: Certificate
    users: Mapping[str, str] = field(default_factory=dict)
    admin: str = "admin"
    admin_password: str = field(default_factory=lambda: secrets.token_hex(16))
    # With a certificate here, a second SASL_SSL listener (`misnamed_port`) presents it: for
    # tests that clients refuse a broker certificate naming another host.
    misnamed: Certificate | None = None
    # A third listener (`mtls_port`), SSL with `ssl.client.auth=required`: a client proves who it
    # is with a certificate from the CA (principal `User:CN=<its CN>`), no password.
    mtls: bool = False

    @property
    def broker_principal(self) -> str:
        return f"User:CN={self.certificate.cert.stem}"


# The broker settings of a single node: every internal topic on its one replica, and each
# message flushed, so a kill loses nothing the broker acknowledged.
SINGLE_NODE_PROPERTIES = {
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "3",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "auto.create.topics.enable": "true",
    "log.flush.interval.messages": "1",
}


class PrivateKafka(PrivateService):
    """A KRaft Kafka broker (broker and controller in one JVM) on free ports: a single node, or,
    with `node_id`, `controller_port`, `voters` and `cluster_id` shared with its peers, one node
    of a `PrivateKafkaCluster`. `properties` are its broker settings (`SINGLE_NODE_PROPERTIES`
    by default)."""

    name = "kafka"

    def __init__(
        self,
        workdir: Path,
        *,
        start_timeout: float = 90.0,
        heap: str = "512m",
        partitions: int = 3,
        security: KafkaSecurity | None = None,
        advertised_port: int | None = None,
        node_id: int = 1,
        controller_port: int | None = None,
        voters: str | None = None,
        cluster_id: str | None = None,
        properties: Mapping[str, str] = SINGLE_NODE_PROPERTIES,
        listeners: Mapping[str, int | None] | None = None,
        inter_broker_listener: str = "PLAINTEXT",
    ) -> None:
        super().__init__(workdir, start_timeout=start_timeout)
        self.port = free_port()
        # Clients connect to the advertised port after bootstrap: a fault proxy in front of the
        # broker (tests/faults/proxy.py) listens there and forwards to `port`.
        self.advertised_port = advertised_port or self.port
        self.controller_port = controller_port or free_port()
        self.node_id = node_id
        self.voters = voters or f"{node_id}@127.0.0.1:{self.controller_port}"
        self.cluster_id = cluster_id
        self.properties = dict(properties)
        # More plain-text listeners (name -> the port it advertises, None: its own), each on a
        # port of its own (`listener_ports`): e.g. REPLICATION for the brokers' replication
        # (`inter_broker_listener`), RELAY for the relay only. A fault proxy listening on the
        # advertised port cuts that traffic alone: a client is told the addresses of the
        # listener it connected through.
        self.listener_ports = {name: free_port() for name in listeners or {}}
        self.listener_advertised = {
            name: port or self.listener_ports[name] for name, port in (listeners or {}).items()
        }
        self.inter_broker_listener = inter_broker_listener
        self.misnamed_port = free_port() if security and security.misnamed else None
        self.mtls_port = free_port() if security and security.mtls else None
        self.heap = heap
        self.partitions = partitions
        self.security = security
        self.libs = kafka_libs()
        self._props = workdir / "server.properties"
        self._log_offset = 0
        self._log4j = workdir / "log4j2.properties"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            shutil.which("java") or "java",
            "-cp", f"{self.libs}/*",
            f"-Xms{self.heap}", f"-Xmx{self.heap}",
            "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",  # starts faster; enough for tests
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self._log4j}",
            main, *args,
        ]  # fmt: skip

    def _command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self._props))

    def _listener_properties(self) -> list[str]:
        plain = [
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.advertised_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        ]
        if self.listener_ports:
            names = ["PLAINTEXT", *self.listener_ports]
            ports = {"PLAINTEXT": self.port, **self.listener_ports}
            advertised = {"PLAINTEXT": self.advertised_port, **self.listener_advertised}
            plain = [
                "listeners="
                + ",".join(f"{n}://127.0.0.1:{ports[n]}" for n in names)
                + f",CONTROLLER://127.0.0.1:{self.controller_port}",
                "advertised.listeners="
                + ",".join(f"{n}://127.0.0.1:{advertised[n]}" for n in names),
                "controller.listener.names=CONTROLLER",
                f"inter.broker.listener.name={self.inter_broker_listener}",
                "listener.security.protocol.map="
                + ",".join(f"{n}:PLAINTEXT" for n in names)
                + ",CONTROLLER:PLAINTEXT",
            ]
        security = self.security
        if security is None:
            return plain
        cert = security.certificate
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{security.admin}" password="{security.admin_password}";'
        )
        listeners = [f"CLIENT://127.0.0.1:{self.port}"]
        misnamed: list[str] = []
        if security.misnamed is not None:
            listeners.append(f"MISNAMED://127.0.0.1:{self.misnamed_port}")
            misnamed = [
                f"listener.name.misnamed.scram-sha-512.sasl.jaas.config={jaas}",
                f"listener.name.misnamed.ssl.keystore.location={security.misnamed.chain}",
            ]
        if security.mtls:
            listeners.append(f"MTLS://127.0.0.1:{self.mtls_port}")
            misnamed.append("listener.name.mtls.ssl.client.auth=required")
        return [
            f"listeners={','.join(listeners)},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners={','.join(listeners)}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=CLIENT",
            "listener.security.protocol.map="
            "CLIENT:SASL_SSL,CONTROLLER:SSL,MISNAMED:SASL_SSL,MTLS:SSL",
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
            f"listener.name.client.scram-sha-512.sasl.jaas.config={jaas}",
            *misnamed,
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={cert.chain}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={cert.ca}",
            # The controller listener knows no passwords: the broker proves itself with its
            # certificate, so nobody without one can reach the controller's admin requests.
            "listener.name.controller.ssl.client.auth=required",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            f"super.users=User:{security.admin};{security.broker_principal}",
            "allow.everyone.if.no.acl.found=false",
        ]

    def _prepare(self) -> None:
        # "Kafka Server started" must be read from this start's lines, not an earlier start's.
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        if (self.workdir / "data" / "meta.properties").exists():
            return
        self._props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    f"node.id={self.node_id}",
                    f"controller.quorum.voters={self.voters}",
                    *self._listener_properties(),
                    f"log.dirs={self.workdir / 'data'}",
                    f"num.partitions={self.partitions}",
                    *(f"{key}={value}" for key, value in self.properties.items()),
                    "",
                ]
            ),
            encoding="utf-8",
        )
        self._props.chmod(0o600)  # it holds the admin's password when secured
        self._log4j.write_text(
            "\n".join(
                [
                    "status = warn",
                    "appender.file.type = File",
                    "appender.file.name = FILE",
                    f"appender.file.fileName = {self.log_path}",
                    "appender.file.layout.type = PatternLayout",
                    "appender.file.layout.pattern = [%d] %p %m (%c)%n",
                    "rootLogger.level = INFO",
                    "rootLogger.appenderRef.file.ref = FILE",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        cluster_id = self.cluster_id or kraft_cluster_id()
        scram: list[str] = []
        if self.security is not None:
            users = {self.security.admin: self.security.admin_password, **self.security.users}
            for name, password in users.items():
                scram += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
        format_log = self.workdir / "log" / "format.log"
        with format_log.open("wb") as out:
            result = subprocess.run(
                self._java(
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(self._props),
                    *scram,
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=self.start_timeout,
                check=False,
            )
        if result.returncode != 0:
            raise ServiceFailed(
                f"formatting the private Kafka storage failed; last lines of {format_log}:\n"
                f"{_tail(format_log)}"
            )

    def _healthy(self) -> bool:
        if not _port_open(self.port):
            return False
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return b"Kafka Server started" in log.read()
        except OSError:
            return False


# --- Apicurio Registry ---------------------------------------------------------------------------


class PrivateRegistry(PrivateService):
    """An Apicurio Registry of one test, HTTPS only (its certificate from `cert`) and with one
    basic-auth user (Quarkus' embedded user realm); in memory. The devstack found its jar and a
    Java 21+ (`DEVSTACK_APICURIO_JAR`, `DEVSTACK_APICURIO_JAVA` in .devstack/env)."""

    name = "schema-registry"

    def __init__(
        self, workdir: Path, *, java: str, jar: str, cert: Certificate, user: str, password: str
    ) -> None:
        super().__init__(workdir)
        self.log_path = workdir / "log" / f"{self.name}.stdout"
        self.java, self.jar, self.cert = java, jar, cert
        self.user, self.password = user, password
        self.port, self.management_port = free_port(), free_port()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/apis/ccompat/v7"

    def _command(self) -> list[str]:
        options = {
            "quarkus.http.host": "127.0.0.1",
            "quarkus.http.port": str(free_port()),  # plain HTTP: refused (insecure-requests)
            "quarkus.http.ssl-port": str(self.port),
            "quarkus.http.ssl.certificate.files": str(self.cert.cert),
            "quarkus.http.ssl.certificate.key-files": str(self.cert.key),
            "quarkus.http.insecure-requests": "disabled",
            "quarkus.management.host": "127.0.0.1",
            "quarkus.management.port": str(self.management_port),
            "quarkus.otel.sdk.disabled": "true",
            "quarkus.http.auth.basic": "true",
            "quarkus.security.users.embedded.enabled": "true",
            "quarkus.security.users.embedded.plain-text": "true",
            f"quarkus.security.users.embedded.users.{self.user}": self.password,
            "quarkus.http.auth.permission.all.paths": "/*",
            "quarkus.http.auth.permission.all.policy": "authenticated",
        }
        return [
            self.java,
            "-Xmx384m",
            *(f"-D{key}={value}" for key, value in options.items()),
            "-jar",
            self.jar,
        ]

    def _healthy(self) -> bool:
        request = urllib.request.Request(f"{self.url}/config")
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(
                request, timeout=2, context=_client_tls(self.cert.ca)
            ) as response:
                return bool(response.status == 200)
        except (OSError, ValueError):
            return False
