"""Celery configuration: the queues, the one routing table, time limits and beat schedule."""

from __future__ import annotations

from datetime import timedelta

from kombu import Exchange, Queue

from config.settings import Settings

QUEUES = ("thumbnails", "video", "metadata", "webhooks")

# task name prefix -> queue. Call sites never name a queue.
ROUTES = {
    "thumbnails.*": {"queue": "thumbnails"},
    "video.*": {"queue": "video"},
    "metadata.*": {"queue": "metadata"},
    "webhooks.*": {"queue": "webhooks"},
    # Upkeep is light I/O: it rides on the webhooks pool (threads) rather than needing a
    # fifth one. On the metadata pool it waited behind jobs that each read a whole original
    # (900 s limit): a DELETE's objects stayed past the contract's 30 s, and the sweep that
    # re-sends a killed worker's jobs did not run.
    "upkeep.*": {"queue": "webhooks"},
}

# (soft, hard) seconds per processing task. The soft limit lets the task fail the job with
# a readable reason; the hard limit kills the child if it ignores that. For video these are
# ceilings: a task's limits are fixed when it is sent, before the duration is known, so the
# limit proportional to the duration is ffmpeg's own watchdog (media.video.time_budget:
# 120 s + 20 s per second of source, not counting seconds a transcode was starved of CPU,
# under this soft limit).
TIME_LIMITS = {
    "thumbnails.render": (120, 150),
    # metadata downloads and hashes the whole original: 5 GiB at 10 MB/s is 540 s
    "metadata.extract": (900, 930),
    "video.transcode": (3 * 3600, 3 * 3600 + 120),
}

# Redis and SQS redeliver an unacknowledged message after this long; it must exceed the
# longest hard limit or a long transcode would be handed to a second worker mid-run.
# SQS accepts at most 12 h, and sets it on a queue when kombu creates the queue.
VISIBILITY_TIMEOUT = 4 * 3600

# SQS long polling: a receive waits up to 20 s (SQS's maximum) and returns as soon as a
# message arrives, so an idle consumer costs about 3 requests a minute. kombu then pauses
# polling_interval seconds; it must not be 0, for a worker whose processes are all busy
# would re-check for a free slot in a tight loop.
SQS_WAIT_SECONDS = 20
SQS_POLLING_INTERVAL = 1

# Every Redis connection (broker and live-status channel) gives up on a Redis that accepts
# connections but does not answer, instead of waiting for ever: kombu leaves redis-py with no
# read timeout, and a stopped Redis held /readyz, /metrics and each upload's job send for as
# long as it was stopped. A worker's BRPOP waits 1 s at a time, well within this.
REDIS_TIMEOUTS = {"socket_timeout": 5, "socket_connect_timeout": 3}
# A send that fails after commit is not lost (beat's sweep re-sends a job within minutes,
# the dispatcher a delivery); so it is tried three times quickly, not for half a minute.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5,
                        "interval_max": 1}


def celery_config(settings: Settings) -> dict:
    """The Celery settings for `settings`: explicit queues, JSON only, results off."""
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport_options(settings),
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        "task_queues": [Queue(q, Exchange(q, type="direct"), routing_key=q) for q in QUEUES],
        "task_default_queue": "metadata",
        "task_routes": ROUTES,
        "task_create_missing_queues": False,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "worker_max_memory_per_child": 1024 * 1024,  # KiB: recycle a child past 1 GiB RSS
        "timezone": "UTC",
        "beat_schedule_filename": str(settings.instance_dir / "celerybeat-schedule"),
        "beat_schedule": {
            "upkeep.sweep": {"task": "upkeep.sweep", "schedule": timedelta(seconds=30)},
            "upkeep.free_interrupted": {"task": "upkeep.free_interrupted",
                                        "schedule": timedelta(hours=1)},
            "webhooks.dispatch": {"task": "webhooks.dispatch",
                                  "schedule": timedelta(seconds=5)},
        },
    }


def transport_options(settings: Settings) -> dict:
    """kombu's options for the broker in `settings` (every connection must use them)."""
    if settings.broker_kind == "redis":
        return {"visibility_timeout": VISIBILITY_TIMEOUT, **REDIS_TIMEOUTS}
    if settings.broker_kind == "sqs":
        return _sqs_options(settings)
    return {}


def _sqs_options(settings: Settings) -> dict:
    """SQS: the endpoint is the URL's host (plain HTTP, for emulators) or AWS's for the
    region; credentials are the URL's user:password or boto3's chain, region boto3's."""
    return {
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "queue_name_prefix": settings.sqs_queue_prefix,
        "wait_time_seconds": SQS_WAIT_SECONDS,
        "polling_interval": SQS_POLLING_INTERVAL,
        # botocore waits 60 s per connect attempt, 5 attempts, by default: an upload sending
        # its jobs to an unreachable SQS should give up soon and leave them to the sweep.
        "client-config": {"connect_timeout": 5, "retries": {"mode": "standard"}},
    }
