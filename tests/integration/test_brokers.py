"""The pipeline on Amazon SQS: moto_server serves the queues (and S3), real worker
subprocesses per queue and beat consume them. RabbitMQ's run is in test_pipeline.py."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

import tests.conftest as conftest
from config.celery import QUEUES, REDIS_TIMEOUTS, TIME_LIMITS, VISIBILITY_TIMEOUT, celery_config
from config.settings import ConfigError, Settings
from media.records import Job
from tests.conftest import wait_for
from tests.helpers import auth, upload, wait_final
from tests.receiver import Receiver

FAST_RETRIES = {"MEDIAMILL_WEBHOOK_ALLOW_PRIVATE": "1",
                "MEDIAMILL_WEBHOOK_RETRY_SCHEDULE": "1,1,1,1,1,1,1,1"}
UNREACHABLE_SQS = "sqs://127.0.0.1:1"  # nothing listens on port 1


def wait_workers_logged_ready(env: dict, queues, timeout: float = 60) -> None:
    """SQS has no fanout exchange, so no remote control and no ping: read each worker's
    log for Celery's "ready." line instead."""
    logs = Path(env["MEDIAMILL_INSTANCE_DIR"]).parent

    def ready() -> bool:
        return all(" ready." in (logs / f"worker-{queue}.log").read_text() for queue in queues)

    wait_for(ready, timeout=timeout, interval=0.2, what=f"workers for {queues}")


@pytest.fixture
def make_sqs_stack(make_stack, s3_endpoint, monkeypatch):
    """make_stack on SQS at moto_server (which also serves S3), queues of its own."""
    monkeypatch.setattr(conftest, "wait_workers_ready", wait_workers_logged_ready)
    host = s3_endpoint.split("://", 1)[1]

    def make(extra_env: dict | None = None, **kwargs):
        env = {"MEDIAMILL_SQS_QUEUE_PREFIX": f"t{uuid.uuid4().hex[:10]}-", **(extra_env or {})}
        return make_stack(broker_url=f"sqs://testing:testing@{host}", s3_endpoint=s3_endpoint,
                          extra_env=env, **kwargs)

    return make  # make_stack stops the processes, side by side


@pytest.fixture
def receiver():
    started = Receiver().start()
    yield started
    started.stop()


@pytest.mark.integration
def test_sqs_broker_runs_the_pipeline_webhooks_and_beat(make_sqs_stack, receiver, corpus):
    stack = make_sqs_stack(storage="s3", extra_env=FAST_RETRIES, beat=True)
    assert stack.settings.broker_kind == "sqs"
    key = stack.create_key("alice")
    client = stack.client()
    attempts = defaultdict(int)

    def answer(request):  # every asset.completed fails once: its retry needs beat's dispatch
        if request.json["type"] != "asset.completed":
            return 200
        attempts[request.json["data"]["id"]] += 1
        return 500 if attempts[request.json["data"]["id"]] == 1 else 200

    receiver.answer = answer
    # Accepted while SQS was unreachable: recorded, then sent again by the sweep.
    down = create_app_with_broker(stack, UNREACHABLE_SQS)
    answered = upload(down.test_client(), key, corpus / "images/camera/DSCN0021.jpg",
                      webhook_url=receiver.url)
    assert answered.status_code == 202
    swept = answered.json["id"]
    with stack.app.extensions["mediamill"].db.session() as session:
        for job in session.scalars(select(Job).where(Job.asset_id == swept)):
            assert job.status == "queued"
            job.queued_at -= timedelta(minutes=10)  # silent past MEDIAMILL_JOB_STALE_SECONDS
    # Sent as beat sends it (beat's first sweep would come 30 s after its start), run by
    # the metadata worker, which sends the jobs to SQS.
    stack.app.extensions["celery"].send_task("upkeep.sweep")
    ids = [upload(client, key, corpus / path, webhook_url=receiver.url).json["id"]
           for path in ("images/camera/jolla.jpg", "video/example.mp4")]

    for asset_id in (*ids, swept):
        assert wait_final(client, key, asset_id, timeout=90)["status"] == "completed"
    with stack.app.extensions["mediamill"].db.session() as session:
        jobs = session.scalars(select(Job)).all()
    assert len(jobs) == 7 and all(job.worker.split("@")[0] == job.kind for job in jobs)

    def completed_delivered():
        log = [d for asset_id in (*ids, swept) for d in client.get(
            f"/api/v1/webhooks/deliveries?asset_id={asset_id}", headers=auth(key)).json["items"]
            if d["event_type"] == "asset.completed"]
        return log if len(log) == 3 and {d["status"] for d in log} == {"delivered"} else None

    log = wait_for(completed_delivered, timeout=40, interval=0.5, what="retried deliveries")
    assert all([a["status_code"] for a in d["attempts"]] == [500, 200] for d in log)
    events = defaultdict(set)  # asset -> webhook-ids of its asset.completed: one event each
    for request in receiver.of_type("asset.completed"):
        events[request.json["data"]["id"]].add(request.headers["webhook-id"])
    assert {asset: len(seen) for asset, seen in events.items()} == dict.fromkeys(
        (*ids, swept), 1)

    scrape = client.get("/metrics")
    assert scrape.status_code == 200
    lines = scrape.data.decode().splitlines()
    assert "mediamill_broker_up 1.0" in lines
    assert 'mediamill_jobs{kind="video",status="completed"} 1.0' in lines


@pytest.mark.integration
def test_sqs_metrics_show_waiting_messages_and_an_unreachable_broker(make_sqs_stack, corpus):
    stack = make_sqs_stack(queues=())  # no workers: the messages wait
    key = stack.create_key("alice")
    assert upload(stack.client(), key, corpus / "video/example.mp4").status_code == 202
    scrape = stack.client().get("/metrics")
    assert scrape.status_code == 200
    lines = scrape.data.decode().splitlines()
    assert "mediamill_broker_up 1.0" in lines
    for queue, waiting in {"video": 1, "thumbnails": 1, "metadata": 1, "webhooks": 0}.items():
        assert f'mediamill_queue_depth{{queue="{queue}"}} {waiting:.1f}' in lines

    assert stack.client().get("/readyz").status_code == 200
    down_app = create_app_with_broker(stack, UNREACHABLE_SQS).test_client()
    down = down_app.get("/metrics")
    assert down.status_code == 200
    assert "mediamill_broker_up 0.0" in down.data.decode().splitlines()
    started = time.monotonic()
    ready = down_app.get("/readyz")
    assert ready.status_code == 503 and "broker unreachable" in ready.json["detail"]
    assert time.monotonic() - started < 30  # not botocore's 60 s per connect attempt


def create_app_with_broker(stack, broker_url: str):
    """The same deployment's web app, but sending to `broker_url`."""
    from web import create_app

    app = create_app(replace(stack.settings, broker_url=broker_url))
    app.config["TESTING"] = True
    return app


def test_sqs_transport_options_follow_the_settings():
    settings = Settings.from_env({"MEDIAMILL_BROKER_URL": "sqs://",
                                  "MEDIAMILL_SQS_QUEUE_PREFIX": "prod_media-"})
    options = celery_config(settings)["broker_transport_options"]
    assert options["queue_name_prefix"] == "prod_media-"
    # Longer than any task may run, within SQS's 12 h ceiling.
    longest = max(hard for _, hard in TIME_LIMITS.values())
    assert longest < options["visibility_timeout"] == VISIBILITY_TIMEOUT <= 12 * 3600
    assert 0 < options["wait_time_seconds"] <= 20 and options["polling_interval"] > 0
    assert "region" not in options  # boto3's chain (AWS_DEFAULT_REGION) decides
    assert Settings.from_env({}).sqs_queue_prefix == "mediamill-"
    redis = celery_config(Settings.from_env({}))["broker_transport_options"]
    assert redis == {"visibility_timeout": VISIBILITY_TIMEOUT, **REDIS_TIMEOUTS}
    assert 0 < REDIS_TIMEOUTS["socket_timeout"] < 60  # a hung Redis is given up on, soon
    with pytest.raises(ConfigError, match="MEDIAMILL_SQS_QUEUE_PREFIX"):
        Settings.from_env({"MEDIAMILL_SQS_QUEUE_PREFIX": "media.prod"})
    assert max(len(queue) for queue in QUEUES) + 60 <= 80  # SQS names: 80 characters
