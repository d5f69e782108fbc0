"""Requests that never arrive whole, sent to the web process as the Procfile runs it
(gunicorn, gthread): a malformed chunked body is a 400, a stalled one a 408, and neither
costs a web thread for longer than MEDIAMILL_REQUEST_BODY_TIMEOUT; headers sent a line at
a time cost it no longer than MEDIAMILL_REQUEST_HEADER_TIMEOUT all told."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import urllib3

from tests.conftest import ROOT, free_port, make_bucket, stack_env, stop, wait_for
from tests.helpers import jpeg

pytestmark = pytest.mark.integration

STALL = 1  # MEDIAMILL_REQUEST_BODY_TIMEOUT for these tests
HEADERS = 2  # MEDIAMILL_REQUEST_HEADER_TIMEOUT
THREADS = 2


def _web(tmp: Path, env: dict):
    """gunicorn as the Procfile runs it, one worker of THREADS threads; (port, API key)."""
    env["MEDIAMILL_REQUEST_BODY_TIMEOUT"] = str(STALL)
    env["MEDIAMILL_REQUEST_HEADER_TIMEOUT"] = str(HEADERS)
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "flask"), "--app", "web", "release"], env=env, cwd=ROOT,
                   capture_output=True, timeout=60, check=True)
    issued = subprocess.run([str(bin_dir / "flask"), "--app", "web", "create-api-key", "ops"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=True)
    key = json.loads(issued.stdout.strip().splitlines()[-1])["api_key"]
    port = free_port()
    with open(tmp / "web.log", "wb") as log:
        proc = subprocess.Popen(
            [str(bin_dir / "gunicorn"), "web:create_app()", "--config",
             "python:config.gunicorn", "--bind", f"127.0.0.1:{port}", "--worker-class",
             "config.gunicorn.ThreadWorker", "--workers", "1", "--threads", str(THREADS)],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok,
                 timeout=60, what="gunicorn")
        yield port, key
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def web(tmp_path_factory, redis_server, s3_endpoint):
    """S3 storage: an upload's body is read by boto3's threads as it goes to storage."""
    tmp = tmp_path_factory.mktemp("bodies")
    yield from _web(tmp, stack_env(tmp, redis_server, 15, f"sqlite:///{tmp / 'db.sqlite'}",
                                   f"s3://{make_bucket(s3_endpoint)}", s3_endpoint))


@pytest.fixture
def file_web(tmp_path, redis_server):
    """file:// storage: the web process itself serves the originals, with sendfile."""
    env = stack_env(tmp_path, redis_server, 14, f"sqlite:///{tmp_path / 'db.sqlite'}",
                    f"file://{tmp_path / 'media'}")
    for served in _web(tmp_path, env):
        yield served, tmp_path


def _send(port: int, head: bytes, body: bytes) -> tuple[int, dict]:
    """Send a raw request and read the answer to its end: its status and problem JSON."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)
        return _answer(sock)


def _answer(sock: socket.socket) -> tuple[int, dict]:
    """The answer on `sock`, read until the server closes: its status and problem JSON
    (socket.timeout after 30 s: the server kept the connection waiting)."""
    answer = b"".join(iter(lambda: sock.recv(65536), b""))
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, payload = rest.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in headers.lower(), answer[:400]
    return int(status_line.split()[1]), json.loads(payload)


def _head(method: str, path: str, key: str, content_type: str, framing: str) -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: {content_type}\r\n{framing}\r\n").encode()


ENDPOINTS = [
    ("/api/v1/assets", "multipart/form-data; boundary=B",
     b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
     + b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4096),  # 1 MiB: storage is writing it
    ("/api/v1/uploads", "application/json", b'{"filename": "a.mp4", "size": 5000000}'),
    ("/api/v1/webhooks", "application/json", b'{"url": "https://example.com/hook"}'),
]


@pytest.mark.parametrize(("path", "content_type", "body"), ENDPOINTS,
                         ids=["assets", "uploads", "webhooks"])
@pytest.mark.parametrize(("damage", "status"), [
    ("bad-chunk-size", 400), ("bad-chunk-size-later", 400), ("chunk-longer-than-said", 400),
    ("cut-off", 408),  # then nothing more is sent, and the client waits for its answer
])
def test_a_malformed_chunked_body_is_a_400_and_a_cut_off_one_a_408(web, path, content_type,
                                                                  body, damage, status):
    port, key = web
    head = _head("POST", path, key, content_type, "Transfer-Encoding: chunked\r\n")
    chunk = b"%x\r\n%s\r\n" % (len(body), body)
    chunked = {"bad-chunk-size": b"zz\r\n" + body + b"\r\n0\r\n\r\n",
               "bad-chunk-size-later": chunk + b"zz\r\n" + body + b"\r\n0\r\n\r\n",
               "chunk-longer-than-said": b"%x\r\n" % (len(body) - 5) + body + b"\r\n0\r\n\r\n",
               "cut-off": chunk[:len(chunk) // 2]}[damage]

    answered, problem = _send(port, head, chunked)

    assert answered == status, problem
    assert problem["status"] == status and problem["detail"]


def test_stalled_bodies_end_in_a_408_and_never_starve_the_web_process(web):
    """More stalled uploads than the web process has threads: each ends after the stall
    timeout with a 408, and the service answers other requests all along."""
    port, key = web
    body = (b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
            b"\xff\xd8\xff\xe0")
    head = _head("POST", "/api/v1/assets", key, "multipart/form-data; boundary=B",
                 "Content-Length: 100000\r\n")
    stalled = []
    try:
        for _ in range(THREADS * 3):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(head + body)  # and not another byte
            stalled.append(sock)
        time.sleep(0.5)  # every thread is now waiting for a body

        # served once a stall times out, not after the stalled clients give up
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=25).ok
        for sock in stalled:
            status, problem = _answer(sock)
            sock.close()  # gunicorn lingers up to 2 s on a closed connection until we do
            assert (status, problem["title"]) == (408, "Request Timeout"), problem
    finally:
        for sock in stalled:
            sock.close()


def test_headers_sent_a_line_at_a_time_end_in_a_408_and_never_starve_the_web_process(web):
    """Slowloris: more clients than threads, each sending a header line every 0.3 s (well
    within any wait between reads) and never the blank line that ends them, as a first
    request, after a kept-alive one or pipelined behind one. Each gets a 408 once HEADERS
    seconds have passed, and the service answers others meanwhile; a client that sends its
    headers slowly but within the deadline is served."""
    port, _ = web
    healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    slow = []
    try:
        for n in range(THREADS * 3):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            kind = ("first", "kept-alive", "pipelined")[n % 3]
            if kind == "kept-alive":  # a whole request and its answer first
                sock.sendall(healthz)
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            sock.sendall((healthz if kind == "pipelined" else b"")
                         + b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            slow.append(sock)
        started = time.monotonic()
        polite = socket.create_connection(("127.0.0.1", port), timeout=30)
        slow_but_in_time = [b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"]
        served = False
        for n in range(int(HEADERS * 2 / 0.3) + 1):
            for sock in slow:
                with contextlib.suppress(OSError):  # closed by the server: the 408 is read below
                    sock.sendall(b"X-Slow-%d: 1\r\n" % n)
            if slow_but_in_time:
                polite.sendall(slow_but_in_time.pop(0))
            if not served and time.monotonic() - started > HEADERS + 0.5:
                # every thread held by the slow clients until their deadline: served now
                assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).ok
                served = True
            time.sleep(0.3)
        assert served
        for sock in slow:
            answers = b"".join(iter(lambda sock=sock: sock.recv(65536), b""))
            last = answers[answers.rindex(b"HTTP/1.1 "):]
            assert last.startswith(b"HTTP/1.1 408 "), answers[:600]
            problem = json.loads(last.partition(b"\r\n\r\n")[2])
            assert problem["title"] == "Request Timeout" and f"{HEADERS} s" in problem["detail"]
        polite_answer = polite.recv(65536)
        assert polite_answer.startswith(b"HTTP/1.1 200 "), polite_answer[:300]
    finally:
        for sock in slow:
            sock.close()


def test_a_body_trickled_after_its_answer_holds_a_thread_for_seconds_not_hours(web):
    """An upload with no API key is answered at once (401) without its body being read;
    gunicorn then reads what is left of the body, to keep the connection, waiting up to 5 s
    for each next byte: a client sending one every second held the thread for as long as
    its Content-Length let it. Now the whole drain gets 5 s, then the connection closes."""
    port, _ = web
    trickling = []
    try:
        for _ in range(THREADS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(b"POST /api/v1/assets HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/octet-stream\r\n"
                         b"Content-Length: 100000\r\n\r\n")
            trickling.append(sock)
        started, closed = time.monotonic(), set()
        while len(closed) < len(trickling) and time.monotonic() - started < 15:
            for n, sock in enumerate(trickling):
                try:
                    sock.sendall(b"x")
                except OSError:
                    closed.add(n)
            time.sleep(0.5)
        assert len(closed) == len(trickling)  # within 15 s: the drain's 5 s and a margin
        # the threads are free again
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).ok
        for sock in trickling:
            with contextlib.suppress(OSError):  # a reset, when the close beat the reading
                assert sock.recv(65536).startswith(b"HTTP/1.1 401 ")
    finally:
        for sock in trickling:
            sock.close()


def test_a_client_that_never_closes_does_not_hold_up_other_connections(web):
    """gunicorn lingers up to 2 s on each connection it closes until the client closes too;
    on its main thread, that held up every other connection each time. Here the lingering
    costs one thread, and with a thread free others are served at once."""
    port, _ = web
    silent = []
    try:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            silent.append(sock)  # read its answer, and never closes
            # 1.5 s: under the 2 s gunicorn lingers, far above what serving /healthz takes
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1.5).ok
            time.sleep(2.2)  # the lingering thread is free again
    finally:
        for sock in silent:
            sock.close()


def test_a_valid_chunked_upload_sent_in_small_pieces_is_accepted(web):
    """As requests sends a generator body: chunked, each chunk in several small writes."""
    port, key = web
    body = (b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + _JPEG + b"\r\n--B--\r\n")
    head = _head("POST", "/api/v1/assets", key, "multipart/form-data; boundary=B",
                 "Transfer-Encoding: chunked\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(head)
            for at in range(0, len(body), 1024 * 1024):
                chunk = body[at:at + 1024 * 1024]
                data = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
                for piece in range(0, len(data), 65536):
                    sock.sendall(data[piece:piece + 65536])
            sock.sendall(b"0\r\n\r\n")
        except BrokenPipeError:
            pass
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 202 "), answer.split(b"\r\n\r\n", 1)[-1][:600]


def _jpeg_bytes() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.effect_noise((3000, 2000), 64).convert("RGB").save(out, "JPEG", quality=95)
    return out.getvalue()


_JPEG = _jpeg_bytes()


def test_a_download_the_client_stops_reading_is_let_go_quietly(file_web, corpus):
    """An original served by the web process (file:// storage) to a client that stops
    reading it: after the body timeout the connection is closed, a thread freed, and the
    log holds no error or traceback (a client going away is not the service's fault)."""
    (port, key), tmp = file_web
    head = (corpus / "images/orientation/Landscape_1.jpg").read_bytes()
    data = head + bytes(64 * 2**20 - len(head))  # more than loopback's socket buffers hold
    created = requests.post(f"http://127.0.0.1:{port}/api/v1/assets", timeout=60,
                            headers={"Authorization": f"Bearer {key}"},
                            files={"file": ("big.jpg", data, "image/jpeg")})
    assert created.status_code == 202, created.text
    url = created.json()["original_url"]
    with requests.get(url, stream=True, timeout=30) as download:
        assert download.status_code == 200
        got = len(download.raw.read(65536))  # and then nothing for a while
        time.sleep(STALL + 3)
        with contextlib.suppress(urllib3.exceptions.HTTPError, OSError):
            while chunk := download.raw.read(65536):  # what was in flight, then the end
                got += len(chunk)
    assert got < len(data)  # cut off
    assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).ok
    log = (tmp / "web.log").read_text()
    assert "Traceback" not in log and "[ERROR]" not in log, log[-3000:]


@pytest.fixture
def small_web(tmp_path, redis_server, s3_endpoint):
    """S3 storage and MEDIAMILL_MAX_UPLOAD_BYTES of 1 MiB."""
    env = stack_env(tmp_path, redis_server, 13, f"sqlite:///{tmp_path / 'db.sqlite'}",
                    f"s3://{make_bucket(s3_endpoint)}", s3_endpoint)
    env["MEDIAMILL_MAX_UPLOAD_BYTES"] = str(2**20)
    yield from _web(tmp_path, env)


def _chunked(port: int, path: str, key: str, content_type: str, body: bytes) -> tuple[int, dict]:
    """POST `body` chunked (no Content-Length) in 64 KiB chunks; the answer."""
    head = _head("POST", path, key, content_type, "Transfer-Encoding: chunked\r\n")
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[at:at + 65536]), body[at:at + 65536])
                      for at in range(0, len(body), 65536))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # answered early
            sock.sendall(head + chunks + b"0\r\n\r\n")
        return _answer(sock)


@pytest.mark.parametrize("body", [
    b'{"url": "https://example.com/hook"}' + b" " * 3 * 2**20,  # valid JSON, cut or not
    b'{"url": "https://example.com/' + b"x" * 3 * 2**20 + b'"}',
], ids=["padded", "long"])
@pytest.mark.parametrize("path", ["/api/v1/webhooks", "/api/v1/uploads"])
def test_a_json_body_over_the_cap_is_413_also_when_sent_chunked(web, path, body):
    """A JSON body was read whole, however large (100 MB, then a 400); Werkzeug's own cap
    cuts a chunked body short without a word: the padded one was then taken."""
    port, key = web
    status, problem = _chunked(port, path, key, "application/json", body)
    assert (status, problem["title"]) == (413, "Payload Too Large"), problem
    assert str(2 * 2**20) in problem["detail"]


def _form(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart/form-data body (boundary B) of (name, filename, value) parts."""
    out = b""
    for name, filename, value in parts:
        named = f'; filename="{filename}"' if filename is not None else ""
        out += (f'--B\r\nContent-Disposition: form-data; name="{name}"{named}\r\n\r\n'.encode()
                + value + b"\r\n")
    return out + b"--B--\r\n"


@pytest.mark.parametrize("extra", [
    [("other", "junk.bin", b"\0" * 3 * 2**20)],  # a part with a file name but not `file`
    [("file", "again.jpg", b"\0" * 3 * 2**20)],  # a second `file`
], ids=["other-file-part", "second-file"])
def test_a_chunked_upload_is_counted_whole_against_the_upload_limit(small_web, extra):
    """The file is within the limit, but the parts around it are not: they were read to
    their end (and dropped) without being counted, whatever their size."""
    port, key = small_web
    body = _form(("file", "a.jpg", jpeg()), *extra)
    status, problem = _chunked(port, "/api/v1/assets", key, "multipart/form-data; boundary=B",
                               body)
    assert (status, problem["title"]) == (413, "Payload Too Large"), problem
    assert "rest of the form" in problem["detail"]
    api = f"http://127.0.0.1:{port}/api/v1/assets"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "multipart/form-data; boundary=B"}
    assert requests.get(api, headers=headers, timeout=10).json()["items"] == []
    # the same file and a field the service does not read, chunked: taken
    within = _form(("name", None, b"a.jpg"), ("file", "a.jpg", jpeg()))
    created = requests.post(api, data=iter([within]), headers=headers, timeout=30)  # chunked
    assert created.status_code == 202, created.text
