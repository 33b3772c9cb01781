"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
# revision identifiers, used by Alembic.
revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade(engine_name: str) -> None:
    """Upgrade the schema of the database named engine_name."""
    # A database declared after this revision was written has no function here: nothing to do.
    globals().get(f"upgrade_{engine_name}", _nothing)()


def downgrade(engine_name: str) -> None:
    """Downgrade the schema of the database named engine_name."""
    globals().get(f"downgrade_{engine_name}", _nothing)()


def _nothing() -> None:
    pass

## one upgrade_<name>() / downgrade_<name>() per database that dbregistry.alembic.run_migrations selected
% for db_name in context.get("databases", []):

def upgrade_${db_name}() -> None:
    """Upgrade the ${db_name} database."""
    ${context.get("%s_upgrades" % db_name, "pass")}


def downgrade_${db_name}() -> None:
    """Downgrade the ${db_name} database."""
    ${context.get("%s_downgrades" % db_name, "pass")}

% endfor
