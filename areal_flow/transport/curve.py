"""CurveZMQ for sockets that leave the machine: per-run keys, server and client options.

Rules:
- Loopback addresses (``tcp://127.x.x.x``, ``tcp://localhost``, ``tcp://[::1]``, ``ipc://``,
  ``inproc://``) need nothing. Any other address is reachable from other hosts and must carry
  CurveZMQ: encryption plus authentication, with keys that exist only in this run's folder.
- A run has one server key pair (every socket that binds: edge receivers, the driver's control
  socket) and one client key pair (every socket that connects). ``generate_run_keys`` writes
  them once, in ``run_dir/keys/`` (folder 0700, files 0600, created exclusively so nothing
  else's file is trusted); every process of the run calls ``load_run_keys`` on the shared
  folder. A process on another host has no access to the driver's folder: it is handed the
  key material in memory (``key_material``/``RunKeys.from_material``) and ``write_run_keys``
  puts it in its own copy of the run folder, with the same modes, before anything loads it.
- A server socket admits only clients that prove they hold the run's client secret key:
  ``apply_server`` starts (once per ZeroMQ context) a ZAP handler that accepts exactly the
  run's client public key. A client without the keys cannot complete the handshake; a client
  with some other key pair is refused by the handler. Neither ever reaches the application.
- Keys are Z85 text (40 characters), never pickled.

Use::

    keys = generate_run_keys(run_dir)          # driver, once per run, before any process
    keys = load_run_keys(run_dir)              # in every process that opens sockets
    host = bind_host(multi_host)               # "127.0.0.1" unless placed on several hosts
    if needs_curve(address):                   # or always, to force it (tests)
        apply_server(socket, keys)             # before socket.bind(address)
        apply_client(socket, keys)             # before socket.connect(address)

``Receiver``/``Sender`` take ``keys=`` and do this themselves; given keys they always use
CurveZMQ, and without keys they refuse an address that is not loopback.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import zmq
from zmq.auth.thread import ThreadAuthenticator

KEYS_DIR: Final = "keys"
ZAP_DOMAIN: Final = "areal-flow"
_FILES: Final = ("server.public", "server.secret", "client.public", "client.secret")


@dataclass(frozen=True)
class RunKeys:
    """The run's two CurveZMQ key pairs, Z85-encoded."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def from_material(cls, material: list[str]) -> RunKeys:
        """Keys from ``key_material``'s four Z85 strings (what crosses to another host)."""
        if len(material) != len(_FILES) or any(len(k) != 40 for k in material):
            raise ValueError("CurveZMQ key material is four 40-character Z85 keys")
        server_public, server_secret, client_public, client_secret = (
            k.encode("ascii") for k in material
        )
        return cls(server_public, server_secret, client_public, client_secret)


def key_material(keys: RunKeys) -> list[str]:
    """The keys as four Z85 strings (plain JSON-able text, never pickled objects)."""
    return [value.decode("ascii") for value in _values(keys)]


def generate_run_keys(run_dir: Path | str) -> RunKeys:
    """Create this run's key pairs in ``run_dir/keys`` (0700, files 0600); fails if present."""
    folder = Path(run_dir) / KEYS_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=False)
    folder.chmod(0o700)  # mkdir's mode is filtered by the umask
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    keys = RunKeys(server_public, server_secret, client_public, client_secret)
    for name, value in zip(_FILES, _values(keys), strict=True):
        descriptor = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(value)
    return keys


def write_run_keys(run_dir: Path | str, keys: RunKeys) -> None:
    """Put keys made elsewhere in ``run_dir/keys`` (0700, files 0600), for a process on
    another host. Atomic: the files are written in a private folder that is then renamed into
    place, so concurrent writers on one host are safe; a folder already there (a shared run
    folder, or another replica of this host first) must hold exactly these keys."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    partial = run / f".{KEYS_DIR}.{os.getpid()}.{threading.get_ident()}"
    partial.mkdir(mode=0o700)
    partial.chmod(0o700)
    for name, value in zip(_FILES, _values(keys), strict=True):
        descriptor = os.open(partial / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(value)
    try:
        partial.rename(run / KEYS_DIR)
    except OSError:  # already there: keep it if it is this run's, refuse otherwise
        for name in _FILES:
            (partial / name).unlink()
        partial.rmdir()
        if load_run_keys(run) != keys:
            raise ValueError(
                f"{run / KEYS_DIR} holds other CurveZMQ keys than this run's; "
                "a run folder belongs to one run — remove the stale folder"
            ) from None


def load_run_keys(run_dir: Path | str) -> RunKeys:
    """The keys ``generate_run_keys`` wrote; refuses files that others could read or change."""
    folder = Path(run_dir) / KEYS_DIR
    values = []
    for name in _FILES:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(
                f"no CurveZMQ key {path}: the driver creates the run's keys with "
                "areal_flow.transport.curve.generate_run_keys(run_dir) before starting nodes"
            )
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise PermissionError(
                f"CurveZMQ key {path} has mode {mode:o}; it must be readable by its owner only "
                f"(chmod 600 {path})"
            )
        value = path.read_bytes().strip()
        if len(value) != 40:
            raise ValueError(f"CurveZMQ key {path} is not a 40-character Z85 key")
        values.append(value)
    return RunKeys(*values)


def is_loopback(address: str) -> bool:
    """Whether a ZeroMQ address stays on this machine."""
    scheme, _, rest = address.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = urlsplit(f"//{rest}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name or an interface ("*", "eth0"): reachable from outside
        return False


def needs_curve(address: str) -> bool:
    """Whether a socket on ``address`` must use CurveZMQ (it is not loopback)."""
    return not is_loopback(address)


def bind_host(multi_host: bool) -> str:
    """The host to bind data and control sockets on: loopback unless the run spans hosts."""
    return "0.0.0.0" if multi_host else "127.0.0.1"


def apply_server(socket: zmq.Socket, keys: RunKeys) -> None:
    """Make ``socket`` a CurveZMQ server admitting only the run's client key (before bind)."""
    _authenticator(socket.context, keys.client_public)
    socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    socket.setsockopt(zmq.CURVE_SECRETKEY, keys.server_secret)
    socket.setsockopt(zmq.CURVE_PUBLICKEY, keys.server_public)
    socket.setsockopt(zmq.CURVE_SERVER, 1)


def apply_client(socket: zmq.Socket, keys: RunKeys) -> None:
    """Make ``socket`` a CurveZMQ client of the run's servers (before connect)."""
    socket.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    socket.setsockopt(zmq.CURVE_PUBLICKEY, keys.client_public)
    socket.setsockopt(zmq.CURVE_SECRETKEY, keys.client_secret)


def check_address(address: str, keys: RunKeys | None) -> None:
    """Refuse an off-host address without keys: it would be open to the network."""
    if keys is None and needs_curve(address):
        raise ValueError(
            f"{address} is reachable from other hosts; sockets there need CurveZMQ: pass "
            "keys=load_run_keys(run_dir) (areal_flow.transport.curve), or bind 127.0.0.1"
        )


# One ZAP handler per ZeroMQ context (ZeroMQ allows one per context), started on first use.
_authenticators: dict[int, tuple[ThreadAuthenticator, bytes]] = {}
_lock = threading.Lock()


def _authenticator(context: zmq.Context, client_public: bytes) -> None:
    underlying = context.underlying
    with _lock:
        running = _authenticators.get(underlying)
        if running is not None:
            if running[1] != client_public:
                raise ValueError("one ZeroMQ context cannot serve two runs' CurveZMQ keys")
            return
        # A plain (sync) view of the context: the handler runs in its own thread.
        auth = ThreadAuthenticator(zmq.Context.shadow(underlying))
        auth.start()
        auth.configure_curve_callback(ZAP_DOMAIN, _AllowOnly(client_public))
        _authenticators[underlying] = (auth, client_public)


def stop_authenticator(context: zmq.Context) -> None:
    """Stop the context's ZAP handler, if any (before ``context.term``/``destroy``)."""
    with _lock:
        running = _authenticators.pop(context.underlying, None)
    if running is not None:
        running[0].stop()


class _AllowOnly:
    """ZAP credentials check: exactly one client public key (Z85) is allowed."""

    def __init__(self, client_public: bytes) -> None:
        self.allowed = client_public

    def callback(self, domain: str, key: bytes) -> bool:  # pyzmq passes the key Z85-encoded
        return domain == ZAP_DOMAIN and key == self.allowed


def _values(keys: RunKeys) -> tuple[bytes, bytes, bytes, bytes]:
    return (keys.server_public, keys.server_secret, keys.client_public, keys.client_secret)
