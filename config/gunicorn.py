"""gunicorn's config module (`--config python:config.gunicorn`, in the Procfile): check
mediamill's settings and bring the schema up to date once, in the master, before any
worker boots. A bad setting or an unreachable database then stops `web` with the one
line that names it; checked only in the workers, gunicorn would boot a new worker every
time one exited, or halt with a traceback of its own."""

from config.settings import load
from media.services import Services

_services = Services.from_settings(load())  # or one line naming the variable, and exit 3
_services.prepare(storage=True)  # or one line naming DATABASE_URL or storage, and exit 3
_services.db.dispose()  # the workers, forked later, make their own connections
del _services
