"""Relational index: SQLAlchemy models, sessions and Alembic migrations."""
