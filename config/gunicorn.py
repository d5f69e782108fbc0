"""gunicorn's config module (`--config python:config.gunicorn`, in the Procfile): check
mediamill's settings and bring the schema up to date once, in the master, before any
worker boots. A bad setting or an unreachable database then stops `web` with the one
line that names it; checked only in the workers, gunicorn would boot a new worker every
time one exited, or halt with a traceback of its own.

It also makes the few answers gunicorn gives by itself, before Flask sees the request (a
request line over 4094 bytes: 414, headers over 8 KB: 431, a malformed request: 400),
problem+json like every other error, instead of gunicorn's HTML page; and it holds the
worker class the Procfile names, `config.gunicorn.ThreadWorker`: gunicorn's gthread worker
with a deadline for each request's headers."""

import contextlib
import errno
import json
import socket
import time

from gunicorn import util
from gunicorn.http.errors import NoMoreData
from gunicorn.workers import gthread

from config.settings import load
from media.services import Services

_settings = load()  # or one line naming the variable, and exit 3
_services = Services.from_settings(_settings)
_services.prepare(storage=True)  # or one line naming DATABASE_URL or storage, and exit 3
_services.db.dispose()  # the workers, forked later, make their own connections
del _services


def _write_problem(sock, status_int, reason, mesg):
    """gunicorn's `util.write_error` (which every worker class calls), as problem+json."""
    body = json.dumps({"type": "about:blank", "title": reason, "status": status_int,
                       "detail": str(mesg)[:300] or reason}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


util.write_error = _write_problem


@contextlib.contextmanager
def _stopped_reading():
    try:
        yield
    except TimeoutError:
        raise BrokenPipeError(errno.EPIPE, "The client stopped reading.") from None


class _ClientSocket(socket.socket):
    """A client connection whose request line and headers must all arrive within
    `header_timeout` seconds. gunicorn's gthread worker reads them in one of its threads,
    from a request's first byte on, with blocking reads and no timeout: a client that sent a
    header line now and then (slowloris) held a thread for as long as it liked, and as many
    such clients as there are threads stopped the web process. Past the deadline the client
    gets a 408 and the connection is closed without waiting for what it is still sending
    (it may see a reset instead of the 408: a client that slow is let go at once).

    The deadline starts when a thread takes a request, first or kept-alive (gunicorn then
    makes the socket blocking), and ends when ThreadWorker.handle_request hands it to the
    app, where BodyGuard sets the body's own timeout. Timeouts gunicorn sets meanwhile (to
    drain the previous request's body) apply as well: each read waits for the nearer.

    After the answer, what the app did not read of the body is drained by gunicorn, within
    `drain_timeout` seconds all told (start_drain); gunicorn's own limit applies to each
    read, so a client sending a byte every few seconds held the thread for an hour, after
    any answer (a 401 to an upload with no key, say). Past it the connection is closed."""

    __slots__ = ("_deadline", "_draining", "_ended", "_wait")
    drain_timeout = gthread.DEFAULT_WORKER_DATA_TIMEOUT
    header_timeout = float(_settings.request_header_timeout)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: float | None = None
        self._draining = False
        self._ended = False
        self._wait: float | None = None  # the timeout callers set, as gettimeout says

    def setblocking(self, flag: bool) -> None:
        if self.fileno() == -1:  # closed in the worker's thread already (ThreadWorker.handle)
            return
        super().setblocking(flag)
        self._wait = None if flag else 0.0
        self._deadline = time.monotonic() + self.header_timeout if flag else None
        self._draining = False

    def settimeout(self, value: float | None) -> None:
        super().settimeout(value)
        self._wait = value

    def gettimeout(self) -> float | None:
        return self._wait

    def shutdown(self, how: int) -> None:
        self._deadline = None  # closing: gunicorn's own linger decides how long it waits
        super().shutdown(how)

    def end_deadline(self) -> None:
        """The request line and headers are in."""
        if self._deadline is not None:
            self._deadline = None
            super().settimeout(self._wait)

    # BodyGuard's timeout applies to writes too: a client that stopped reading its answer
    # is let go as gunicorn lets go of one that closed (a debug line), not with a traceback
    def sendall(self, data, flags: int = 0) -> None:
        with _stopped_reading():
            super().sendall(data, flags)

    def send(self, data, flags: int = 0) -> int:
        with _stopped_reading():
            return super().send(data, flags)

    def sendfile(self, file, offset: int = 0, count: int | None = None) -> int:
        with _stopped_reading():
            return super().sendfile(file, offset, count)

    def start_drain(self) -> None:
        """The answer is out: what is left of the body has `drain_timeout` to arrive."""
        self._deadline = time.monotonic() + self.drain_timeout
        self._draining = True

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if self._ended:  # what is still coming from a client that was too slow: not read
            return b""
        if self._deadline is None or self._wait == 0.0:
            return super().recv(bufsize, flags)
        left = self._deadline - time.monotonic()
        ours = self._wait is None or left <= self._wait  # the deadline is the nearer
        try:
            if left <= 0:
                raise TimeoutError
            super().settimeout(left if ours else self._wait)
            return super().recv(bufsize, flags)
        except TimeoutError:
            if not ours:
                raise  # the caller's own timeout
            self._deadline, self._ended = None, True
            if self._draining:
                raise TimeoutError from None  # gunicorn gives up the drain and closes
            with contextlib.suppress(OSError):  # a client that reads nothing gets nothing
                util.write_error(self, 408, "Request Timeout", f"The request line and "
                                 f"headers did not arrive within {self.header_timeout:g} s.")
            raise NoMoreData() from None  # gunicorn closes the connection, logging nothing


class ThreadWorker(gthread.ThreadWorker):
    """gunicorn's gthread worker, each client socket a _ClientSocket, and each connection
    closed in the thread that served it. Over TLS that gunicorn terminates (it wraps the
    socket later) or with cleartext HTTP/2 on (its requests take another path), sockets are
    left as gunicorn makes them, with no deadline: terminate those in front of it."""

    def enqueue_req(self, conn) -> None:
        if type(conn.sock) is socket.socket and self.cfg.http2_cleartext == "off":  # new
            plain = conn.sock
            conn.sock = _ClientSocket(plain.family, plain.type, plain.proto, plain.detach())
            conn.sock.setblocking(False)  # as gunicorn left it
        super().enqueue_req(conn)

    def handle_request(self, req, conn):
        sock = conn.sock if isinstance(conn.sock, _ClientSocket) else None
        if sock is not None:
            sock.end_deadline()
        keepalive = super().handle_request(req, conn)
        if sock is not None:
            sock.start_drain()
        return keepalive

    def handle(self, conn):
        keepalive = super().handle(conn)
        if keepalive is False and isinstance(conn.sock, _ClientSocket):
            # gunicorn lingers on a connection it closes, for up to 2 s until the client
            # closes too (RFC 9112 9.6), on the worker's main thread, which accepts and
            # dispatches every connection: each client that never closed stalled them all
            # for 2 s. Here it lingers in this thread; the main thread's close is then a
            # no-op.
            conn.close(graceful=True)
        return keepalive
