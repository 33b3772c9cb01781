"""Alembic's env.py of the example: the registry's databases, each with its models' MetaData."""

from logging.config import fileConfig
from pathlib import Path

from alembic import context
from models import AnalyticsBase, Base

from dbregistry import Registry
from dbregistry.alembic import run_migrations

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

HERE = Path(__file__).resolve().parent.parent

with Registry.from_yaml(HERE / "databases.yaml") as registry:
    run_migrations(registry, {"primary": Base.metadata, "analytics": AnalyticsBase.metadata})
