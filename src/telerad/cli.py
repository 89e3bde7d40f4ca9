"""The ``telerad`` command line (adapter: parses arguments, calls services, prints results)."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import func, select

from telerad.archive import registry
from telerad.config import Settings
from telerad.context import Context

err = Console(stderr=True)


def _ctx(click_ctx: click.Context) -> Context:
    if "context" not in click_ctx.obj:
        click_ctx.obj["context"] = Context.open(Settings())
        click_ctx.call_on_close(click_ctx.obj["context"].close)
    ctx: Context = click_ctx.obj["context"]
    return ctx


@click.group()
@click.version_option(package_name="telerad")
@click.pass_context
def main(click_ctx: click.Context) -> None:
    """telerad: teleradiology archive, workflow and reporting."""
    click_ctx.ensure_object(dict)


@main.command()
@click.pass_context
def init(click_ctx: click.Context) -> None:
    """Create the data directory and bring the database schema up to date (idempotent)."""
    ctx = _ctx(click_ctx)
    click.echo(f"telerad home: {ctx.settings.home}\ndatabase: {ctx.db.engine.url!r} (schema up to date)")


@main.command()
@click.pass_context
def serve(click_ctx: click.Context) -> None:
    """Start DICOMweb/HTTP and the DICOM (DIMSE) listener together."""
    from telerad.server import run

    run(_ctx(click_ctx))


@main.command("dimse-worker", hidden=True)
@click.pass_context
def dimse_worker(click_ctx: click.Context) -> None:
    """A DICOM listener process started by `telerad serve` when dimse_workers > 1 (telerad/workers.py)."""
    from telerad.workers import run_worker

    ctx = Context.open(Settings(), migrate=False)  # telerad serve migrated the schema before starting it
    try:
        run_worker(ctx)
    finally:
        ctx.close()


@main.group()
def site() -> None:
    """Sites (tenants): hospitals and clinics."""


@site.command("add")
@click.option("--code", required=True)
@click.option("--name", required=True)
@click.option("--accept-unregistered-loopback", is_flag=True,
              help="Demo use: associations from unregistered AE titles on loopback land in this site.")
@click.pass_context
def site_add(click_ctx: click.Context, code: str, name: str, accept_unregistered_loopback: bool) -> None:
    try:
        s = registry.add_site(_ctx(click_ctx), code, name, accept_unregistered_loopback)
    except registry.RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"site {s.code} added")


@site.command("list")
@click.pass_context
def site_list(click_ctx: click.Context) -> None:
    for s in registry.list_sites(_ctx(click_ctx)):
        flag = " (accepts unregistered loopback AEs)" if s.accept_unregistered_loopback else ""
        click.echo(f"{s.code}\t{s.name}{flag}")


@main.group()
def node() -> None:
    """DICOM nodes (application entities) of a site."""


@node.command("add")
@click.option("--site", "site_code", required=True)
@click.option("--ae", "ae_title", required=True)
@click.option("--host", required=True)
@click.option("--port", required=True, type=int)
@click.option("--description", default="")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The node's TLS client certificate (PEM): accept this AE title only over mutual TLS with it.")
@click.pass_context
def node_add(click_ctx: click.Context, site_code: str, ae_title: str, host: str, port: int, description: str,
             cert: Path | None) -> None:
    try:
        fingerprint = registry.certificate_fingerprint(cert) if cert else None
        n = registry.add_node(_ctx(click_ctx), site_code, ae_title, host, port, description, fingerprint)
    except (registry.RegistryError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"node {n.ae_title} added to site {site_code}" + (" (bound to its TLS certificate)" if cert else ""))


@node.command("list")
@click.option("--site", "site_code", default=None)
@click.pass_context
def node_list(click_ctx: click.Context, site_code: str | None) -> None:
    for n in registry.list_nodes(_ctx(click_ctx), site_code):
        click.echo(f"{n.site_code}\t{n.ae_title}\t{n.host}:{n.port}")


@main.command("import")
@click.option("--site", "site_code", required=True)
@click.option("--jobs", type=click.IntRange(1, 64), default=4, show_default=True,  # importer.DEFAULT_JOBS
              help="Objects stored at once (each waits on the disk's syncs).")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.pass_context
def import_(click_ctx: click.Context, site_code: str, jobs: int, paths: tuple[Path, ...]) -> None:
    """Import DICOM files, folders and zip archives into a site."""
    from telerad.archive.importer import count_sources, import_paths

    ctx = _ctx(click_ctx)
    try:
        site_obj = registry.get_site(ctx, site_code)
    except registry.RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    total = count_sources(list(paths))
    columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("import", total=total)
        summary = import_paths(ctx, site_obj.id, list(paths), lambda _n: bar.advance(task), jobs=jobs)
    for name, reason in summary.failures:
        err.print(f"[red]{name}[/red]: {reason}", markup=True, highlight=False)
    c = summary.counts
    click.echo(f"stored {c['stored']}, duplicate {c['duplicate']}, conflict {c['conflict']}, "
               f"rejected {c['rejected']}")
    if summary.failures:
        sys.exit(1)


@main.command()
@click.option("--remove-orphans", is_flag=True,
              help="Remove blobs nothing indexes (nor keeps as a conflict) that are older than --older-than.")
@click.option("--older-than", type=click.FloatRange(min=10), default=60.0, show_default=True,
              help="Minutes since an orphan was written or last wanted by a store, for --remove-orphans "
                   "(at least 10: a younger one may belong to a store under way).")
@click.pass_context
def check(click_ctx: click.Context, remove_orphans: bool, older_than: float) -> None:
    """Verify every stored blob against its SHA-256 and the index."""
    from telerad.archive.check import check as run_check

    report = run_check(_ctx(click_ctx), older_than * 60 if remove_orphans else None)
    for uid in report.missing:
        click.echo(f"MISSING blob for instance {uid}")
    for uid in report.corrupt:
        click.echo(f"CORRUPT blob for instance {uid}")
    for key in report.orphans:
        click.echo(f"orphan blob {key} (not indexed)")
    for key in report.removed:
        click.echo(f"removed orphan blob {key}")
    removed = f", {len(report.removed)} orphan removed" if remove_orphans else ""
    click.echo(f"checked {report.checked}: {len(report.missing)} missing, {len(report.corrupt)} corrupt, "
               f"{len(report.orphans)} orphan{removed}")
    if not report.ok:
        sys.exit(1)


@main.command()
@click.option("--site", "site_code", default="DEMO")
@click.pass_context
def demo(click_ctx: click.Context, site_code: str) -> None:
    """Create a demo site (accepting unregistered loopback AEs) with synthetic studies, and a demo user whose
    password and API token are written to the data directory (``demo-password``, ``demo-token``), once."""
    from telerad.archive.demo import load_demo
    from telerad.db.models import Study

    ctx = _ctx(click_ctx)
    try:
        site_obj = registry.get_site(ctx, site_code)
    except registry.RegistryError:
        site_obj = registry.add_site(ctx, site_code, "Demo Clinic", accept_unregistered_loopback=True)
    _demo_user(ctx, site_code)
    with ctx.db.session() as s:
        n = s.execute(select(func.count()).select_from(Study).where(Study.site_id == site_obj.id)).scalar_one()
    if n:
        click.echo(f"site {site_code} already has {n} studies; demo data not loaded again")
        return
    results = load_demo(ctx, site_obj.id)
    click.echo(f"demo site {site_code}: {sum(r.ok for r in results)} instances stored")


def _private_file(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def _demo_user(ctx: Context, site_code: str) -> None:
    """User ``demo`` (site staff of the demo site) with a random password and a token, kept in 0600 files."""
    from telerad.security import tokens, users

    try:
        users.get_user(ctx, "demo")
        return
    except users.UserError:
        pass
    password = secrets.token_urlsafe(12)
    users.add_user(ctx, "demo", ["site_staff"], [site_code], password=password, full_name="Demo user")
    token, _ = tokens.create_token(ctx, "demo", site_code, name="demo")
    _private_file(ctx.settings.home / "demo-password", password)
    _private_file(ctx.settings.home / "demo-token", token)
    click.echo(f"demo user 'demo': password in {ctx.settings.home / 'demo-password'}, "
               f"API token in {ctx.settings.home / 'demo-token'}")


def _register_security_commands() -> None:
    from telerad.cli_security import audit_group, token, user

    for group in (user, token, audit_group):
        main.add_command(group)


_register_security_commands()

if __name__ == "__main__":
    main()
