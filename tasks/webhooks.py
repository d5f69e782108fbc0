"""The `webhooks` queue (I/O-bound pool): delivery of signed events to client systems."""
