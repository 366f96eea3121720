"""Alembic migrations of the job store (``service/store.py``): ``versions/`` holds one
revision per schema change; :func:`service.store.open_engine` upgrades on start."""
