"""Statements on the bare driver (telerad.db.compiled) return what SQLAlchemy returns for the same statement."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite

from telerad.db.compiled import Compiled, CompiledCache, NotCompilable, PerDialect
from telerad.db.models import ApiToken, Site, User
from telerad.security import tokens, users
from telerad.security.auth import utcnow


@pytest.fixture
def token_rows(ctx, site):
    users.add_user(ctx, "ris", ["site_staff"], sites=["GH"])
    users.add_user(ctx, "viewer", ["site_staff"], sites=["GH"])
    tokens.create_token(ctx, "ris", "GH")
    tokens.create_token(ctx, "viewer", "GH")
    with ctx.db.session(write=True) as s:
        s.execute(update(ApiToken).where(ApiToken.name == "").values(last_used_at=datetime(2026, 1, 2, 3, 4, 5, 6)))
    users.update_user(ctx, "viewer", disabled=True)


def _via_sqlalchemy(ctx, stmt, values):
    with ctx.db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(stmt, values).all()]


def test_rows_are_converted_as_sqlalchemy_converts_them(ctx, token_rows):
    """SQLite keeps DATETIME as text and BOOLEAN as 0/1: the dialect's result processors apply."""
    stmt = (select(User.username, User.disabled, ApiToken.created_at, ApiToken.last_used_at, ApiToken.revoked_at,
                   User.roles.label("user_roles"))
            .join(ApiToken, ApiToken.user_id == User.id).order_by(User.username))
    compiled = Compiled(stmt, ctx.db.engine.dialect)
    with ctx.db.dbapi_read() as cur:
        rows = compiled.all(cur, {})
    assert rows == _via_sqlalchemy(ctx, stmt, {})
    assert [(r[0], r[1]) for r in rows] == [("ris", False), ("viewer", True)]
    assert all(type(r[1]) is bool and isinstance(r[2], datetime) for r in rows)
    assert rows[0][3] == datetime(2026, 1, 2, 3, 4, 5, 6) and rows[0][4] is None
    with ctx.db.dbapi_read() as cur:
        named = compiled.first_named(cur, {})
    assert (named.username, named.disabled, named.user_roles) == ("ris", False, "site_staff")


def test_parameters_go_in_the_statements_order(ctx, token_rows):
    """Positional paramstyles (sqlite3's ``?``) take the values in the order the SQL names them, whatever the
    order of the caller's dict; a named one (psycopg's) gets only the names it uses."""
    stmt = (select(User.username).join(ApiToken, ApiToken.user_id == User.id)
            .where(ApiToken.created_at <= bindparam("until"), User.username >= bindparam("from_name"),
                   ApiToken.created_at > bindparam("since"))
            .order_by(User.username))
    compiled = Compiled(stmt, ctx.db.engine.dialect)
    values = {"since": datetime(2000, 1, 1), "from_name": "s", "until": utcnow(), "unused": 1}
    with ctx.db.dbapi_read() as cur:
        assert compiled.all(cur, values) == [("viewer",)]
    with ctx.db.dbapi_read() as cur:
        assert compiled.all(cur, {**values, "from_name": "a"}) == [("ris",), ("viewer",)]
    assert _via_sqlalchemy(ctx, stmt, {k: v for k, v in values.items() if k != "unused"}) == [("viewer",)]


def test_values_the_statement_carries_itself(ctx, site):
    """As ``num_instances + 1``: the literal is a bound value the statement carries, not one of the caller's."""
    stmt = update(Site).where(Site.code == bindparam("p_code")).values(name=Site.name + " (north)")
    compiled = Compiled(stmt, ctx.db.engine.dialect)
    with ctx.db.dbapi_write() as cur:
        compiled.run(cur, {"p_code": "GH"})
    with ctx.db.session() as s:
        assert s.execute(select(Site.name).where(Site.code == "GH")).scalar_one() == "General Hospital (north)"


def test_an_expanding_in_is_left_to_sqlalchemy(ctx):
    stmt = select(User.username).where(User.username.in_(bindparam("names", expanding=True)))
    with pytest.raises(NotCompilable):
        Compiled(stmt, ctx.db.engine.dialect)
    cache = CompiledCache(max_size=2)
    assert cache.get("in", stmt, ctx.db.engine.dialect) is None
    plain = select(User.username).where(User.username == bindparam("name"))
    first = cache.get("plain", plain, ctx.db.engine.dialect)
    assert first is not None and cache.get("plain", plain, ctx.db.engine.dialect) is first
    cache.get("third", select(User.id), ctx.db.engine.dialect)  # over max_size: the cache starts again
    assert cache.get("plain", plain, ctx.db.engine.dialect) is not first


def test_per_dialect_makes_one_set_per_dialect_name():
    made = []
    per = PerDialect(lambda d: made.append(d.name) or len(made))
    assert [per(sqlite.dialect()), per(sqlite.dialect()), per(postgresql.dialect())] == [1, 1, 2]
    assert made == ["sqlite", "postgresql"]
