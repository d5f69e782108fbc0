"""asset public_url: the base URL an asset was uploaded through, for links in events

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21 20:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('assets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('public_url', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('assets', schema=None) as batch_op:
        batch_op.drop_column('public_url')
