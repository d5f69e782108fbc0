"""GET /metrics: Prometheus text, read at scrape time from the database and the broker.

The worker pools run on other machines, so per-process counters would each see a slice;
the records and queues are the one place that sees the whole deployment. Every figure is
an aggregate query or a queue length, cheap enough for a 15 s scrape.
"""

from __future__ import annotations

from flask import Blueprint, Response
from kombu import Connection
from kombu.exceptions import ChannelError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from config.celery import QUEUES, transport_options
from config.settings import Settings
from media.records import Asset, Delivery, Job
from media.services import Services
from web.extensions import services

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics():
    """Prometheus exposition of queues, jobs, webhook deliveries and uploads."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(services()))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


class Collector:
    """Builds every metric family from one read-only transaction and one broker visit."""

    def __init__(self, s: Services) -> None:
        self.s = s

    def collect(self):
        yield from self._queues()
        with self.s.db.session(read_only=True) as session:
            yield from self._jobs(session)
            yield self._deliveries(session)
            yield from self._uploads(session)

    def _queues(self):
        depth = GaugeMetricFamily("mediamill_queue_depth", "Messages waiting per queue",
                                  labels=["queue"])
        up = 1
        try:
            for queue, waiting in queue_depths(self.s.settings).items():
                depth.add_metric([queue], waiting)
        except Exception:  # any broker failure: report it down rather than fail the scrape
            up = 0
        yield GaugeMetricFamily("mediamill_broker_up", "1 if the broker answered", value=up)
        yield depth

    def _jobs(self, session):
        # Gauges, not counters: they count rows on record, which purges and prunes remove.
        counts = GaugeMetricFamily("mediamill_jobs", "Jobs on record by queue and status",
                                   labels=["kind", "status"])
        seconds = GaugeMetricFamily("mediamill_job_seconds", "Time spent in the finished jobs "
                                    "on record", labels=["kind", "status"])
        rows = session.execute(select(Job.kind, Job.status, func.count()).group_by(
            Job.kind, Job.status))
        for kind, status, count in rows:
            counts.add_metric([kind, status], count)
        if self.s.db.is_sqlite:
            took = (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400
        else:
            took = func.extract("epoch", Job.finished_at - Job.started_at)
        rows = session.execute(
            select(Job.kind, Job.status, func.sum(took))
            .where(Job.finished_at.is_not(None), Job.started_at.is_not(None))
            .group_by(Job.kind, Job.status)
        )
        for kind, status, total in rows:
            seconds.add_metric([kind, status], float(total or 0))
        yield counts
        yield seconds

    def _deliveries(self, session) -> GaugeMetricFamily:
        family = GaugeMetricFamily("mediamill_webhook_deliveries",
                                   "Webhook deliveries in the log by status", labels=["status"])
        for status, count in session.execute(
                select(Delivery.status, func.count()).group_by(Delivery.status)):
            family.add_metric([status], count)
        return family

    def _uploads(self, session):
        count, size = session.execute(select(func.count(), func.coalesce(func.sum(Asset.size), 0))
                                      ).one()
        yield GaugeMetricFamily("mediamill_uploads", "Assets on record (not yet purged)",
                                value=count)
        yield GaugeMetricFamily("mediamill_upload_bytes", "Bytes of those uploads",
                                value=int(size))


def queue_depths(settings: Settings) -> dict[str, int]:
    """Messages waiting in each queue, asked of the broker (raises when it does not answer).
    The workers' transport options: on SQS they name the queues (their prefix)."""
    with Connection(settings.broker_url, connect_timeout=2,
                    transport_options=transport_options(settings)) as conn:
        return dict(_depths(conn))


def _depths(conn: Connection):
    """(queue, messages waiting but not being worked on) for each queue, over one channel
    (on SQS each channel costs a request); a queue not declared yet holds none. On SQS this
    is ApproximateNumberOfMessages, and a missing queue is created, as a first send would."""
    channel = conn.channel()
    try:
        for queue in QUEUES:
            try:
                yield queue, channel.queue_declare(queue, passive=True).message_count
            except ChannelError:  # RabbitMQ closes the channel of a failed passive declare
                channel.close()
                channel = conn.channel()
                yield queue, 0
    finally:
        channel.close()
