"""Webhooks to a real local receiver through real workers and beat, and the live stream."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

import pytest
from standardwebhooks import Webhook

from tests.conftest import free_port, start_worker, wait_for, wait_workers_ready
from tests.helpers import auth, jpeg, upload, wait_final
from tests.receiver import Receiver

pytestmark = pytest.mark.integration

FAST_RETRIES = {"MEDIAMILL_WEBHOOK_ALLOW_PRIVATE": "1",
                "MEDIAMILL_WEBHOOK_RETRY_SCHEDULE": "1,1,1,1,1,1,1,1"}


@pytest.fixture
def receiver():
    started = Receiver().start()
    yield started
    started.stop()


def small_jpeg(i: int) -> bytes:
    return jpeg(color=(i * 5 % 256, 90, 200), size=(40, 30))


def test_completed_event_is_signed_once_per_event(make_stack, receiver, corpus):
    stack = make_stack(queues=("thumbnails", "metadata", "webhooks"), extra_env=FAST_RETRIES)
    tenant = stack.create_tenant("alice")
    client = stack.client()
    answer = upload(client, tenant["api_key"], corpus / "images/camera/DSCN0010.jpg",
                    webhook_url=receiver.url)
    asset_id = answer.json["id"]
    wait_for(lambda: receiver.of_type("asset.completed"), timeout=60, what="asset.completed")
    wait_for(lambda: len(receiver.received) >= 3, timeout=30, what="job events")
    types = Counter(r.json["type"] for r in receiver.received)
    assert types == {"asset.metadata.completed": 1, "asset.thumbnails.completed": 1,
                     "asset.completed": 1}
    verifier = Webhook(tenant["webhook_secret"])
    for request in receiver.received:
        payload = verifier.verify(request.body, request.headers)
        assert payload["data"]["id"] == asset_id
    done = receiver.of_type("asset.completed")[0].json["data"]
    assert done["status"] == "completed" and done["derivatives"]
    log = client.get(f"/api/v1/webhooks/deliveries?asset_id={asset_id}",
                     headers=auth(tenant["api_key"])).json["items"]
    assert {d["status"] for d in log} == {"delivered"}
    assert all(len(d["attempts"]) == 1 and d["attempts"][0]["status_code"] == 200 for d in log)


def test_failing_receiver_gets_the_same_webhook_id_until_it_answers(make_stack, receiver,
                                                                   corpus):
    stack = make_stack(queues=("thumbnails", "metadata", "webhooks"), extra_env=FAST_RETRIES,
                       beat=True)
    tenant = stack.create_tenant("alice")
    key = tenant["api_key"]
    client = stack.client()
    seen = Counter()

    def answer(request):  # asset.completed fails three times, then succeeds
        if request.json["type"] != "asset.completed":
            return 200
        seen["completed"] += 1
        return 500 if seen["completed"] <= 3 else 200

    receiver.answer = answer
    hook = client.post("/api/v1/webhooks", headers=auth(key),
                       json={"url": receiver.url, "events": ["asset.completed"]})
    assert hook.status_code == 201, hook.json
    asset_id = upload(client, key, corpus / "images/camera/DSCN0021.jpg").json["id"]
    wait_for(lambda: seen["completed"] >= 4, timeout=90, interval=0.5, what="4 attempts")
    attempts = receiver.of_type("asset.completed")
    assert len({r.headers["webhook-id"] for r in attempts}) == 1

    def delivered():
        log = client.get(f"/api/v1/webhooks/deliveries?asset_id={asset_id}",
                         headers=auth(key)).json["items"]
        return log if log and log[0]["status"] == "delivered" else None

    log = wait_for(delivered, timeout=30, what="delivery logged")
    assert len(log) == 1 and log[0]["subscription_id"] == hook.json["id"]
    assert log[0]["webhook_id"] == attempts[0].headers["webhook-id"]
    assert [a["status_code"] for a in log[0]["attempts"]] == [500, 500, 500, 200]
    assert log[0]["next_attempt_at"] is None

    redo = client.post(f"/api/v1/webhooks/deliveries/{log[0]['id']}/redeliver",
                       headers=auth(key))
    assert redo.status_code == 202
    wait_for(lambda: len(receiver.of_type("asset.completed")) == 5, timeout=30,
             what="redelivery")
    again = receiver.of_type("asset.completed")[-1]
    assert again.headers["webhook-id"] == attempts[0].headers["webhook-id"]
    # Its links were signed afresh (an old event's would have expired), and it is signed
    # over what was sent.
    event = Webhook(tenant["webhook_secret"]).verify(again.body, again.headers)
    links = [event["data"]["original_url"], *(d["url"] for d in event["data"]["derivatives"])]
    for link in links:
        parts = urlsplit(link)
        assert client.get(f"{parts.path}?{parts.query}").status_code == 200, link


def test_a_redelivery_during_an_attempt_follows_it_and_never_overlaps(make_stack, receiver,
                                                                      corpus):
    """Redelivering while the receiver is still answering the first attempt used to start
    a second send under the same webhook-id at once (six asks, four sends at a time)."""
    stack = make_stack(queues=("thumbnails", "metadata"), extra_env=FAST_RETRIES, beat=True)
    stack.started.append(start_worker(stack.env, "webhooks", stack.tmp, concurrency=4))
    wait_workers_ready(stack.env, ("webhooks",))
    key = stack.create_key("alice")
    client = stack.client()
    lock, live = threading.Lock(), Counter()

    def answer(request):  # asset.completed is answered slowly, and counted while open
        if request.json["type"] != "asset.completed":
            return 200
        with lock:
            live["now"] += 1
            live["most"] = max(live["most"], live["now"])
        time.sleep(3)
        with lock:
            live["now"] -= 1
        return 200

    receiver.answer = answer
    asset_id = upload(client, key, corpus / "images/camera/DSCN0010.jpg",
                      webhook_url=receiver.url).json["id"]
    wait_for(lambda: receiver.of_type("asset.completed"), timeout=60, what="first attempt")
    log = client.get(f"/api/v1/webhooks/deliveries?asset_id={asset_id}",
                     headers=auth(key)).json["items"]
    delivery_id = next(d["id"] for d in log if d["event_type"] == "asset.completed")
    for _ in range(6):
        redo = client.post(f"/api/v1/webhooks/deliveries/{delivery_id}/redeliver",
                           headers=auth(key))
        assert redo.status_code == 202
        time.sleep(0.25)

    def logged():
        log = client.get(f"/api/v1/webhooks/deliveries?asset_id={asset_id}",
                         headers=auth(key)).json["items"]
        done = next(d for d in log if d["id"] == delivery_id)
        return done if len(done["attempts"]) >= 2 and done["status"] != "pending" else None

    done = wait_for(logged, timeout=40, interval=0.5, what="the redelivery logged")
    time.sleep(6)  # a third send, if any, would be handed out within a dispatch
    sends = receiver.of_type("asset.completed")
    assert live["most"] == 1, f"{live['most']} sends of one event at once"
    assert len(sends) == 2  # the attempt, then one redelivery for the six asks
    assert len({s.headers["webhook-id"] for s in sends}) == 1
    assert done["status"] == "delivered"
    assert [a["status_code"] for a in done["attempts"]] == [200, 200]


def test_deleting_a_subscription_stops_its_retries_and_no_others(make_stack, corpus):
    stack = make_stack(queues=("thumbnails", "metadata", "webhooks"), extra_env=FAST_RETRIES,
                       beat=True)
    key = stack.create_key("alice")
    client = stack.client()
    gone, kept, own = (Receiver(answer=lambda _: 500).start() for _ in range(3))
    try:
        hook = client.post("/api/v1/webhooks", headers=auth(key),
                           json={"url": gone.url, "events": ["asset.completed"]}).json
        client.post("/api/v1/webhooks", headers=auth(key),
                    json={"url": kept.url, "events": ["asset.completed"]})
        asset_id = upload(client, key, corpus / "images/camera/jolla.jpg",
                          webhook_url=own.url).json["id"]
        wait_for(lambda: len(gone.received) >= 2, timeout=60, interval=0.2, what="a retry")
        stop = client.delete(f"/api/v1/webhooks/{hook['id']}", headers=auth(key))
        assert stop.status_code == 204
        time.sleep(1)  # an attempt already under way may finish
        before = [len(gone.received), len(kept.received), len(own.of_type("asset.completed"))]
        # Beat hands due retries out every 5 s: once both other targets have had one since,
        # the deleted subscription's would have been sent too.
        wait_for(lambda: len(kept.received) > before[1]
                 and len(own.of_type("asset.completed")) > before[2], timeout=60,
                 interval=0.2, what="retries to the other targets")
        assert len(gone.received) == before[0], "a deleted subscription was sent a retry"

        log = client.get(f"/api/v1/webhooks/deliveries?asset_id={asset_id}",
                         headers=auth(key)).json["items"]
        stopped = [d for d in log if d["subscription_id"] == hook["id"]]
        assert len(stopped) == 1 and stopped[0]["status"] == "failed"
        assert stopped[0]["next_attempt_at"] is None
        assert stopped[0]["attempts"][-1]["error"] == "not sent: its subscription was deleted"
        others = [d for d in log if d["subscription_id"] != hook["id"]
                  and d["event_type"] == "asset.completed"]
        assert len(others) == 2 and {d["status"] for d in others} == {"pending"}
        again = client.post(f"/api/v1/webhooks/deliveries/{stopped[0]['id']}/redeliver",
                            headers=auth(key))
        assert again.status_code == 409 and again.mimetype == "application/problem+json"
        assert len(gone.received) == before[0]
    finally:
        for receiver in (gone, kept, own):
            receiver.stop()


def test_receiver_that_is_down_gets_the_event_when_it_comes_back(make_stack, corpus):
    stack = make_stack(queues=("thumbnails", "metadata", "webhooks"), extra_env=FAST_RETRIES,
                       beat=True)
    key = stack.create_key("alice")
    client = stack.client()
    port = free_port()
    down = Receiver(port=port)
    asset_id = upload(client, key, corpus / "images/camera/jolla.jpg",
                      webhook_url=down.url).json["id"]
    assert wait_final(client, key, asset_id)["status"] == "completed"

    def failed_attempts():
        log = client.get(f"/api/v1/webhooks/deliveries?asset_id={asset_id}",
                         headers=auth(key)).json["items"]
        completed = [d for d in log if d["event_type"] == "asset.completed"]
        return completed and len(completed[0]["attempts"]) >= 2

    wait_for(failed_attempts, timeout=60, interval=0.5, what="attempts while down")
    back = Receiver(port=port).start()
    try:
        wait_for(lambda: back.of_type("asset.completed"), timeout=60, interval=0.5,
                 what="delivery after the receiver came back")
        assert len(back.of_type("asset.completed")) == 1
    finally:
        back.stop()


def test_exactly_one_completed_event_per_asset_across_50_uploads(make_stack, receiver):
    stack = make_stack(queues=("thumbnails", "metadata", "webhooks"), extra_env=FAST_RETRIES)
    key = stack.create_key("alice")
    client = stack.client()
    client.post("/api/v1/webhooks", headers=auth(key),
                json={"url": receiver.url, "events": ["asset.completed", "asset.failed"]})
    ids = {upload(client, key, data=small_jpeg(i), filename=f"{i}.jpg").json["id"]
           for i in range(50)}
    wait_for(lambda: len(receiver.received) >= 50, timeout=180, interval=0.5,
             what="50 asset.completed")
    time.sleep(3)  # a duplicate, if any, would arrive within this
    got = Counter(r.json["data"]["id"] for r in receiver.of_type("asset.completed"))
    assert set(got) == ids and set(got.values()) == {1}
    assert receiver.of_type("asset.failed") == []


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://10.0.0.1/hook", "http://169.254.169.254/latest",
    "http://[::1]:8000/hook", "http://localhost:5000/hook", "http://[::ffff:127.0.0.1]/x",
    "ftp://example.com/x", "http://user:pw@example.com/x",
    "http://[64:ff9b::7f00:1]/x", "http://[2002:7f00:1::]/x", "http://[::127.0.0.1]/x",
    "http://[::ffff:a00:1]/x", "http://2130706433/x", "http://0x7f.1/x", "http://[::1/x",
])
def test_refused_targets(make_stack, url):
    stack = make_stack(queues=())
    key = stack.create_key("alice")
    client = stack.client()
    answer = client.post("/api/v1/webhooks", headers=auth(key),
                         json={"url": url, "events": ["asset.completed"]})
    assert answer.status_code == 422, answer.json
    assert answer.mimetype == "application/problem+json"
    refused = upload(client, key, data=small_jpeg(1), webhook_url=url)
    assert refused.status_code == 422
    assert client.get("/api/v1/webhooks", headers=auth(key)).json["items"] == []


@pytest.mark.parametrize(("url", "reason"), [
    ("http://127.0.0.1:8080/hook\r\nX-Injected: 1", "control characters"),
    ("http://127.0.0.1:8080/a hook", "spaces"),
    ("http://127.0.0.1:8080/hook\t", "control characters"),
    ("http://:@127.0.0.1:8080/hook", "credentials"),  # empty, but credentials all the same
])
def test_urls_no_delivery_could_use_are_refused_even_where_private_ones_are_allowed(url, reason):
    """Accepted before (201), then every delivery failed in the HTTP client; urlsplit
    silently drops CR, LF and tab."""
    from media.webhooks import RefusedTarget, check_url

    check_url("http://127.0.0.1:8080/hook", allow_private=True)  # the same URL, clean: fine
    with pytest.raises(RefusedTarget, match=reason):
        check_url(url, allow_private=True)


def test_delivery_refuses_a_private_address_at_connect_time(receiver):
    # As after DNS rebinding: the URL passed the check earlier, now it leads to loopback.
    from media import webhooks

    headers = webhooks.sign("whsec_" + "A" * 32, "msg_1", 1_700_000_000, "{}")
    attempt = webhooks.send(receiver.url, "{}", headers, allow_private=False)
    assert attempt.status_code is None and attempt.error.startswith("refused")
    assert receiver.received == []
    allowed = webhooks.send(receiver.url, "{}", headers, allow_private=True)
    assert allowed.delivered and len(receiver.received) == 1


@pytest.mark.parametrize("reused", [False, True])
def test_an_answer_sent_a_byte_at_a_time_is_cut_at_the_attempt_deadline(monkeypatch, reused):
    """Each byte within the 10 s read timeout: without a deadline for the whole attempt it
    ran past its 60 s claim, and a second send of the event could start beside it. On a
    kept-alive connection (reused) as on a new one."""
    import socket

    from media import webhooks

    monkeypatch.setattr(webhooks, "ATTEMPT_DEADLINE", 2.0)
    stop = threading.Event()
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                conn, _ = server.accept()
                threading.Thread(target=answer, args=(conn,), daemon=True).start()

    def read_request(conn: socket.socket) -> None:
        """All of one request: its headers and its body (they may come in several reads)."""
        def more() -> bytes:
            if not (chunk := conn.recv(65536)):
                raise OSError("the client closed the connection")
            return chunk

        data = b""
        while b"\r\n\r\n" not in data:
            data += more()
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(body) < length:
            body += more()

    def answer(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            if reused:  # a first request answered at once, on the connection kept alive
                read_request(conn)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            read_request(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for _ in range(15):  # one header byte a second, never the blank line
                if stop.wait(1.0):
                    return
                conn.sendall(b"x")

    threading.Thread(target=serve, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    headers = webhooks.sign("whsec_" + "A" * 32, "msg_1", 1_700_000_000, "{}")
    try:
        if reused:
            assert webhooks.send(url, "{}", headers, allow_private=True).delivered
        attempt = webhooks.send(url, "{}", headers, allow_private=True)
        assert (attempt.status_code, attempt.error) == (None, "no complete answer within 2 s")
    finally:
        stop.set()
        server.close()


def test_subscriptions_crud_and_isolation(make_stack):
    stack = make_stack(queues=(), extra_env={"MEDIAMILL_WEBHOOK_ALLOW_PRIVATE": "1"})
    alice, bob = stack.create_key("alice"), stack.create_key("bob")
    client = stack.client()
    made = client.post("/api/v1/webhooks", headers=auth(alice),
                       json={"url": "http://127.0.0.1:9/x", "events": ["asset.failed"]})
    assert made.status_code == 201
    assert set(made.json) == {"id", "url", "events", "created_at"}
    bad = client.post("/api/v1/webhooks", headers=auth(alice),
                      json={"url": "http://127.0.0.1:9/x", "events": ["asset.exploded"]})
    assert bad.status_code == 422
    assert client.get("/api/v1/webhooks", headers=auth(bob)).json["items"] == []
    assert client.delete(f"/api/v1/webhooks/{made.json['id']}", headers=auth(bob)).status_code \
        == 404
    assert client.delete(f"/api/v1/webhooks/{made.json['id']}",
                         headers=auth(alice)).status_code == 204
    assert client.get("/api/v1/webhooks", headers=auth(alice)).json["items"] == []


def read_events(client, key, asset_id, last_event_id=None) -> list[dict]:
    """Read one SSE stream to its end; each event as {"id", "event", "data"}."""
    headers = auth(key)
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    response = client.get(f"/api/v1/assets/{asset_id}/events", headers=headers, buffered=False)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    events, text = [], ""
    for chunk in response.response:
        text += chunk.decode() if isinstance(chunk, bytes) else chunk
    response.close()
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line
                      and not line.startswith(":"))
        if "data" in fields:
            events.append({"id": int(fields["id"]), "event": fields["event"],
                           "data": json.loads(fields["data"])})
    return events


def test_event_stream_replays_in_order_and_resumes(make_stack, corpus):
    stack = make_stack(queues=("thumbnails", "metadata", "video"))
    key = stack.create_key("alice")
    client = stack.client()
    asset_id = upload(client, key, corpus / "video/smpte-2997.mp4").json["id"]
    live = read_events(client, key, asset_id)  # current state first, then to the end
    assert live[-1]["data"]["status"] == "completed"
    everything = read_events(client, key, asset_id, last_event_id=0)
    ids = [e["id"] for e in everything]
    assert ids == list(range(1, len(ids) + 1))  # every change, in order, none missing
    statuses = [e["data"]["status"] for e in everything if e["event"] == "state"]
    assert statuses[0] == "queued" and "processing" in statuses
    assert statuses[-1] == "completed"
    assert statuses.index("processing") < len(statuses) - 1
    progress = [e["data"]["jobs"]["video"]["progress"] for e in everything
                if e["event"] == "progress"]
    assert progress and progress == sorted(progress) and 0 < progress[0] < 1
    # The current state first, rendered for this request, then the recorded events.
    assert live[0]["event"] == "state"
    assert [e["id"] for e in live] == ids[-len(live):]
    assert live[1:] == everything[len(everything) - len(live) + 1:]
    # Links recorded by the workers point where the asset was uploaded (the test client's
    # host), not at a worker's own host and PORT.
    urls = [d["url"] for e in everything for d in e["data"]["derivatives"]]
    urls += [e["data"]["original_url"] for e in everything]
    assert urls and all(u.startswith("http://localhost/") for u in urls), urls[:3]
    middle = ids[len(ids) // 2]
    resumed = read_events(client, key, asset_id, last_event_id=middle)
    assert [e["id"] for e in resumed] == ids[ids.index(middle) + 1:]
