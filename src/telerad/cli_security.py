"""``telerad user``, ``telerad token`` and ``telerad audit``: first set-up and administration from the shell.

Every change is audited with actor ``cli`` (the operator at the server's console). ``token create`` prints only
the token on stdout, so a script can capture it: ``TOKEN=$(telerad token create --user ris --site GH)``.
"""

from __future__ import annotations

import json
import sys

import click

from telerad.context import Context
from telerad.security import audit, tokens, users


def _ctx(click_ctx: click.Context) -> Context:
    from telerad.cli import _ctx as shared

    return shared(click_ctx)


def _password(from_stdin: bool, username: str) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    value: str = click.prompt(f"password for {username}", hide_input=True, confirmation_prompt=True)
    return value


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


@click.group()
def user() -> None:
    """Users: roles (site_staff, radiologist, qa_reviewer, coordinator, admin) and site memberships."""


@user.command("add")
@click.option("--username", required=True)
@click.option("--role", "roles", multiple=True, required=True, help="Repeat for several roles.")
@click.option("--site", "sites", multiple=True, help="Site code the user works for / reads for; repeatable.")
@click.option("--name", "full_name", default="")
@click.option("--email", default="")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.option("--no-password", is_flag=True, help="No password (API tokens only, or single sign-on).")
@click.pass_context
def user_add(click_ctx: click.Context, username: str, roles: tuple[str, ...], sites: tuple[str, ...],
             full_name: str, email: str, password_stdin: bool, no_password: bool) -> None:
    """Create a user (prompts for the password unless --password-stdin or --no-password)."""
    password = None if no_password else _password(password_stdin, username)
    try:
        info = users.add_user(_ctx(click_ctx), username, list(roles), list(sites), password=password,
                              full_name=full_name, email=email)
    except ValueError as exc:
        raise _fail(exc) from None
    click.echo(f"user {info.username} added: roles {' '.join(sorted(r.value for r in info.roles))}; "
               f"sites {' '.join(info.sites) or '-'}")


@user.command("list")
@click.pass_context
def user_list(click_ctx: click.Context) -> None:
    for u in users.list_users(_ctx(click_ctx)):
        state = "disabled" if u.disabled else ("locked" if u.locked_until else "active")
        click.echo(f"{u.username}\t{','.join(sorted(r.value for r in u.roles))}\t{','.join(u.sites) or '-'}\t"
                   f"{state}\t{'mfa' if u.mfa else 'no-mfa'}")


@user.command("set")
@click.argument("username")
@click.option("--role", "roles", multiple=True, help="Replace the roles (repeat for several).")
@click.option("--site", "sites", multiple=True, help="Replace the site memberships (repeat for several).")
@click.option("--no-sites", is_flag=True, help="Remove every site membership.")
@click.option("--password-stdin", is_flag=True, help="Set a new password read from stdin.")
@click.option("--unlock", is_flag=True, help="Clear a lockout after failed sign-ins.")
@click.pass_context
def user_set(click_ctx: click.Context, username: str, roles: tuple[str, ...], sites: tuple[str, ...],
             no_sites: bool, password_stdin: bool, unlock: bool) -> None:
    """Change a user's roles, sites or password, or unlock them."""
    try:
        users.update_user(_ctx(click_ctx), username, roles=list(roles) or None,
                          sites=[] if no_sites else (list(sites) or None),
                          password=_password(True, username) if password_stdin else None, unlock=unlock)
    except ValueError as exc:
        raise _fail(exc) from None
    click.echo(f"user {username} updated")


@user.command("disable")
@click.argument("username")
@click.pass_context
def user_disable(click_ctx: click.Context, username: str) -> None:
    """Disable a user: sign-in, sessions and tokens stop working at once."""
    try:
        users.update_user(_ctx(click_ctx), username, disabled=True)
    except ValueError as exc:
        raise _fail(exc) from None
    click.echo(f"user {username} disabled")


@user.command("enable")
@click.argument("username")
@click.pass_context
def user_enable(click_ctx: click.Context, username: str) -> None:
    try:
        users.update_user(_ctx(click_ctx), username, disabled=False)
    except ValueError as exc:
        raise _fail(exc) from None
    click.echo(f"user {username} enabled")


@user.command("totp-reset")
@click.argument("username")
@click.pass_context
def user_totp_reset(click_ctx: click.Context, username: str) -> None:
    """Remove a user's second factor (lost phone); they enrol again at their next sign-in."""
    try:
        users.reset_totp(_ctx(click_ctx), username)
    except ValueError as exc:
        raise _fail(exc) from None
    click.echo(f"second factor of {username} removed")


@click.group()
def token() -> None:
    """API tokens for integrations and scripts (Authorization: Bearer)."""


@token.command("create")
@click.option("--user", "username", required=True)
@click.option("--site", "site_code", required=True)
@click.option("--role", "roles", multiple=True, help="Narrow to these of the user's roles (default: all).")
@click.option("--name", default="", help="What the token is for, e.g. 'RIS of General Hospital'.")
@click.option("--days", type=int, default=None, help="Lifetime in days (default and maximum: token_max_days).")
@click.pass_context
def token_create(click_ctx: click.Context, username: str, site_code: str, roles: tuple[str, ...], name: str,
                 days: int | None) -> None:
    """Create a token; prints only the token (it is not shown again)."""
    try:
        secret, info = tokens.create_token(_ctx(click_ctx), username, site_code, list(roles) or None, name=name,
                                           days=days)
    except ValueError as exc:
        raise _fail(exc) from None
    click.echo(secret)
    click.echo(f"token {info.public_id} for {username} at {site_code} ({' '.join(info.roles)}), expires "
               f"{info.as_dict()['expires_at']}", err=True)


@token.command("list")
@click.option("--user", "username", default=None)
@click.pass_context
def token_list(click_ctx: click.Context, username: str | None) -> None:
    for t in tokens.list_tokens(_ctx(click_ctx), username):
        d = t.as_dict()
        state = "revoked" if t.revoked else f"expires {d['expires_at']}"
        click.echo(f"{t.public_id}\t{t.username}\t{t.site}\t{','.join(t.roles)}\t{state}\t"
                   f"last used {d['last_used_at'] or 'never'}\t{t.name}")


@token.command("revoke")
@click.argument("token_id")
@click.pass_context
def token_revoke(click_ctx: click.Context, token_id: str) -> None:
    try:
        tokens.revoke_token(_ctx(click_ctx), token_id)
    except ValueError as exc:
        raise _fail(exc) from None
    click.echo(f"token {token_id} revoked")


@click.group("audit")
def audit_group() -> None:
    """The audit trail: verify its hash chain, search it."""


@audit_group.command("verify")
@click.pass_context
def audit_verify(click_ctx: click.Context) -> None:
    """Check that no audit record was changed, removed, inserted or reordered (exit status 1 if so)."""
    ctx = _ctx(click_ctx)
    report = audit.verify(ctx.db, ctx.audit.key)
    for problem in report.problems:
        click.echo(f"PROBLEM {problem}")
    click.echo(f"checked {report.checked} audit records: {'chain intact' if report.ok else 'CHAIN BROKEN'}")
    ctx.audit.record(audit.Event(audit.Action.AUDIT_ACCESS, actor="cli", source="cli",
                                 details={"verify": "ok" if report.ok else "FAILED", "checked": report.checked}))
    if not report.ok:
        sys.exit(1)


@audit_group.command("search")
@click.option("--patient-id", default="")
@click.option("--user", "actor", default="")
@click.option("--site", default="")
@click.option("--action", default="")
@click.option("--study-uid", default="")
@click.option("--since", default="", help="ISO 8601 UTC, inclusive (a date works)")
@click.option("--until", default="", help="ISO 8601 UTC, exclusive")
@click.option("--limit", default=100, type=int)
@click.pass_context
def audit_search(click_ctx: click.Context, patient_id: str, actor: str, site: str, action: str, study_uid: str,
                 since: str, until: str, limit: int) -> None:
    """Print matching records as JSON lines, newest first."""
    ctx = _ctx(click_ctx)
    total, rows = audit.search(ctx.db, patient_id=patient_id, actor=actor, site_codes=[site] if site else None,
                               action=action, study_uid=study_uid, since=since, until=until, limit=limit)
    for row in rows:
        click.echo(json.dumps(row, ensure_ascii=False))
    click.echo(f"{len(rows)} of {total} records", err=True)
    ctx.audit.record(audit.Event(audit.Action.AUDIT_ACCESS, actor="cli", source="cli", patient_id=patient_id,
                                 details={"patient_id": patient_id, "user": actor, "site": site, "action": action,
                                          "matched": total}))
