"""gunicorn's config module (`--config python:config.gunicorn`, in the Procfile): check
mediamill's settings and bring the schema up to date once, in the master, before any
worker boots. A bad setting or an unreachable database then stops `web` with the one
line that names it; checked only in the workers, gunicorn would boot a new worker every
time one exited, or halt with a traceback of its own.

It also makes the few answers gunicorn gives by itself, before Flask sees the request (a
request line over 4094 bytes: 414, headers over 8 KB: 431, a malformed request: 400),
problem+json like every other error, instead of gunicorn's HTML page."""

import json

from gunicorn import util

from config.settings import load
from media.services import Services

_services = Services.from_settings(load())  # or one line naming the variable, and exit 3
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
