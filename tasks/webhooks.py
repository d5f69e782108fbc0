"""The `webhooks` queue (I/O-bound thread pool): one signed attempt per message, and the
dispatcher beat runs to hand due retries back to the queue."""

import time

from celery import shared_task

from media import deliveries, webhooks
from media.events import secret_for

DISPATCH_BATCH = 500


@shared_task(name="webhooks.deliver", bind=True, acks_late=True, ignore_result=True)
def deliver(self, delivery_id: str) -> str:
    """Attempt one delivery if it is due and unclaimed. Idempotent: a duplicate message
    finds it claimed or done and does nothing."""
    services = self.app.services
    settings = services.settings
    with services.db.session() as session:
        delivery = deliveries.claim(session, delivery_id)
        if delivery is None:
            return "skipped"
        secret = secret_for(session, delivery.tenant_id)
        url, body, message_id = delivery.url, delivery.body, delivery.message_id
    headers = webhooks.sign(secret, message_id, int(time.time()), body)
    attempt = webhooks.send(url, body, headers, settings.webhook_allow_private)
    with services.db.session() as session:
        done = deliveries.record(session, delivery_id, attempt, settings.webhook_retry_schedule)
        return done.status


@shared_task(name="webhooks.dispatch", bind=True, ignore_result=True)
def dispatch(self) -> int:
    """Send every due delivery to the queue (retries wait here, in the database, not as
    broker ETAs). Bounded per run; safe to run twice."""
    with self.app.services.db.session() as session:
        ids = deliveries.due(session, DISPATCH_BATCH)
    self.app.services.outbox.send(ids)
    return len(ids)
