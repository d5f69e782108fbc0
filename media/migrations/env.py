"""Alembic environment: runs on the connection Database.upgrade() hands over, or on
DATABASE_URL when invoked as `alembic` from the project root."""

from alembic import context
from sqlalchemy import create_engine

from media.records import Base

target_metadata = Base.metadata


def run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    from config import load

    with create_engine(load().database_url).connect() as conn:
        run(conn)
