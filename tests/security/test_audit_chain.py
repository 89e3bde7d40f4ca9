"""The audit trail's hash chain: appends from many threads form one chain, and `verify` finds a changed,
removed, inserted or reordered record, and removed newest records; the key is kept outside the database."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import delete, select, update

from telerad.config import Settings
from telerad.context import Context
from telerad.db.models import AuditEvent, AuditHead
from telerad.security import audit
from telerad.security.audit import Action, Event


def _allow_tampering(ctx: Context) -> None:
    """What an attacker with DDL rights would do first: drop the append-only triggers."""
    with ctx.db.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER audit_events_no_update")
            conn.exec_driver_sql("DROP TRIGGER audit_events_no_delete")
        else:
            conn.exec_driver_sql("DROP TRIGGER audit_events_append_only ON audit_events")


def _fill(ctx: Context, n: int) -> None:
    for i in range(n):
        ctx.audit.record(Event(Action.QUERY, actor_type="user", actor=f"u{i % 3}", source="127.0.0.1",
                               details={"i": i, "name": "Müller^Jürgen"}))
    ctx.audit.flush()


def _verify(ctx: Context) -> audit.VerifyReport:
    return audit.verify(ctx.db, ctx.audit.key)


def test_concurrent_appends_form_one_intact_chain(ctx):
    threads = [threading.Thread(target=_fill, args=(ctx, 50)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = _verify(ctx)
    assert report.ok, report.problems
    assert report.checked == 200
    with ctx.db.session() as s:
        seqs = s.execute(select(AuditEvent.seq).order_by(AuditEvent.seq)).scalars().all()
    assert seqs == list(range(1, 201))


def test_a_second_process_on_the_same_database_extends_the_same_chain(ctx, settings):
    _fill(ctx, 5)
    other = Context.open(Settings(**settings.model_dump()))
    try:
        _fill(other, 5)
        _fill(ctx, 5)
    finally:
        other.close()
    report = _verify(ctx)
    assert report.ok and report.checked == 15, report.problems


def test_the_database_refuses_to_change_or_delete_audit_records(ctx):
    from sqlalchemy.exc import DatabaseError

    _fill(ctx, 2)
    with pytest.raises(DatabaseError, match="append-only"), ctx.db.session(write=True) as s:
        s.execute(update(AuditEvent).where(AuditEvent.seq == 1).values(actor="x"))
    with pytest.raises(DatabaseError, match="append-only"), ctx.db.session(write=True) as s:
        s.execute(delete(AuditEvent).where(AuditEvent.seq == 2))
    assert _verify(ctx).ok


def test_changed_record_is_detected(ctx):
    _fill(ctx, 10)
    _allow_tampering(ctx)
    with ctx.db.session(write=True) as s:
        s.execute(update(AuditEvent).where(AuditEvent.seq == 4).values(actor="someone-else"))
    report = _verify(ctx)
    assert not report.ok
    assert any("record 4" in p and "changed" in p for p in report.problems)


def test_changed_record_with_recomputed_plain_hash_is_still_detected(ctx):
    # An attacker with database access but without the key cannot produce a valid MAC.
    _fill(ctx, 3)
    _allow_tampering(ctx)
    with ctx.db.session(write=True) as s:
        row = s.execute(select(AuditEvent).where(AuditEvent.seq == 3)).scalar_one()
        row.outcome = 0
        row.details = '{"i":99}'
        row.mac = audit.chain_mac(b"guessed key of 32 bytes.........", row.prev_mac, row)
        s.execute(update(AuditHead).values(mac=row.mac))
    assert not _verify(ctx).ok


def test_removed_record_is_detected(ctx):
    _fill(ctx, 10)
    _allow_tampering(ctx)
    with ctx.db.session(write=True) as s:
        s.execute(delete(AuditEvent).where(AuditEvent.seq == 5))
    problems = _verify(ctx).problems
    assert any("record 6" in p and "missing" in p for p in problems), problems


def test_reordered_records_are_detected(ctx):
    _fill(ctx, 10)
    _allow_tampering(ctx)
    with ctx.db.session(write=True) as s:
        a = s.execute(select(AuditEvent).where(AuditEvent.seq == 3)).scalar_one()
        b = s.execute(select(AuditEvent).where(AuditEvent.seq == 7)).scalar_one()
        fields = ("at", "action", "outcome", "actor_type", "actor", "source", "details", "prev_mac", "mac")
        va, vb = [getattr(a, f) for f in fields], [getattr(b, f) for f in fields]
        for f, x, y in zip(fields, va, vb, strict=True):
            setattr(a, f, y)
            setattr(b, f, x)
    report = _verify(ctx)
    assert not report.ok and any("record 3" in p for p in report.problems)


def test_removing_the_newest_records_is_detected(ctx):
    _fill(ctx, 10)
    _allow_tampering(ctx)
    with ctx.db.session(write=True) as s:
        s.execute(delete(AuditEvent).where(AuditEvent.seq >= 9))
    problems = _verify(ctx).problems
    assert problems and "head says 10" in problems[-1]


def test_inserted_record_is_detected(ctx):
    _fill(ctx, 4)
    with ctx.db.session(write=True) as s:
        s.add(AuditEvent(seq=5, at=audit.now_iso(), action="login", outcome=0, actor_type="user", actor="x",
                         source="", site_code="", patient_id="", patient_name="", study_uid="", details="{}",
                         prev_mac=s.execute(select(AuditHead.mac)).scalar_one(), mac="0" * 64))
        s.execute(update(AuditHead).values(seq=5, mac="0" * 64))
    assert any("record 5" in p for p in _verify(ctx).problems)


def test_the_key_lives_outside_the_database_and_cannot_silently_be_replaced(ctx, settings):
    key_file = settings.audit_key_path
    assert key_file.is_file() and oct(key_file.stat().st_mode & 0o777) == "0o600"
    _fill(ctx, 2)
    ctx.close()
    key_file.rename(key_file.with_suffix(".bak"))
    with pytest.raises(RuntimeError, match="audit key file .* missing .* 2 records"):
        Context.open(settings)


def test_patient_is_filled_in_from_the_study(ctx, site):
    from dicomweb_support import put

    from telerad.archive.demo import ct_series

    stored = put(ctx, site.id, ct_series(("Audit^Pat", "AUD1", "19800101", "F"), "1.2.3.4", "A1", 1, 16)[0])
    ctx.audit.record(Event(Action.RETRIEVE, site_id=site.id, site_code="GH", study_uid=stored.study), wait=True)
    total, rows = audit.search(ctx.db, patient_id="AUD1")
    assert total == 1 and rows[0]["patient_name"] == "Audit^Pat" and rows[0]["study_uid"] == "1.2.3.4"


def test_search_filters(ctx):
    ctx.audit.record(Event(Action.LOGIN, actor_type="user", actor="alice", site_code="GH", at="2026-01-01T10:00:00Z"))
    ctx.audit.record(Event(Action.QUERY, actor_type="user", actor="alice", site_code="RC", at="2026-01-02T10:00:00Z"))
    ctx.audit.record(Event(Action.QUERY, actor_type="node", actor="GH_CT", site_code="GH", at="2026-01-03T10:00:00Z"))
    ctx.audit.flush()
    assert audit.search(ctx.db, actor="alice")[0] == 2
    assert audit.search(ctx.db, site_codes=["GH"])[0] == 2
    assert audit.search(ctx.db, site_codes=[])[0] == 0
    assert audit.search(ctx.db, action="query", since="2026-01-03")[1][0]["actor"] == "GH_CT"
    assert audit.search(ctx.db, until="2026-01-02")[1][0]["action"] == "login"
    total, rows = audit.search(ctx.db, limit=1, offset=1)
    assert total == 3 and rows[0]["actor"] == "alice" and rows[0]["site"] == "RC"


def test_records_arriving_together_share_one_commit(ctx, monkeypatch):
    """The writer lingers (AuditLog.LINGER) so a burst of requests costs one commit, not one fsync each;
    flush() does not wait out the linger, and every record is in the chain."""
    ctx.audit.flush()
    commits: list[int] = []
    original = audit.append

    def count(db: object, key: bytes, batch: list[Event]) -> None:  # one transaction, committed, per call
        original(db, key, batch)  # type: ignore[arg-type]
        commits.append(len(batch))

    ctx.audit.LINGER = 2.0  # so the spacing below stays well inside it however slow the machine
    monkeypatch.setattr(audit, "append", count)
    for i in range(20):
        ctx.audit.record(Event(Action.QUERY, actor=f"burst-{i}"))
        time.sleep(0.005)  # requests a few ms apart: without the linger, about one commit each
    ctx.audit.flush()
    monkeypatch.undo()
    with ctx.db.session() as s:
        actors = s.execute(select(AuditEvent.actor).where(AuditEvent.actor.like("burst-%"))).scalars().all()
    assert sorted(actors) == sorted(f"burst-{i}" for i in range(20))
    assert sum(commits) == 20
    assert 1 <= len(commits) <= 2
    assert _verify(ctx).ok
