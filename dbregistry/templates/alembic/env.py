"""Alembic's env.py for the databases a dbregistry Registry declares (written by `dbregistry alembic init`).

The URLs come from the registry, so the YAML file, the environment and the profile
that the application uses decide them here too. Select databases with
`alembic -x db=primary,analytics ...`; bound the wait for another migrator with
`-x lock_timeout=SECONDS`; `alembic upgrade head --sql` writes <name>.sql per database.
"""

from logging.config import fileConfig

from alembic import context

from dbregistry import Registry
from dbregistry.alembic import run_migrations

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

# The YAML file named by $DBREGISTRY_CONFIG (or Registry.load("config/databases.yaml")),
# with the environment and a .env file on top, as the application loads it.
registry = Registry.load()

# Each database's MetaData for autogenerate, for example:
#     from myapp.models import AnalyticsBase, Base
#     target_metadata = {"primary": Base.metadata, "analytics": AnalyticsBase.metadata}
# None migrates a database without autogenerate; replicas are skipped.
target_metadata = dict.fromkeys(registry.names)

with registry:
    run_migrations(registry, target_metadata)
