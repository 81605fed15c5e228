"""`backup-pipeline`: set up a development platform, file requests, and run backups by hand."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from backup_pipeline.settings import Settings, SettingsError, dagster_home

if TYPE_CHECKING:
    from backup_pipeline.operations import Launch, ProcessOutcome


def _ensure_dagster_home() -> Path:
    """DAGSTER_HOME, defaulting to ./var/dagster_home, so runs show in `dagster dev` afterwards;
    made whole and current first (backup_pipeline.instance), whatever a kill left there."""
    from backup_pipeline.instance import prepare_embedded_instance

    home = dagster_home()
    # Written, not read: DagsterInstance.get() finds the embedded instance through it.
    os.environ["DAGSTER_HOME"] = str(home)
    return prepare_embedded_instance(
        home, config_template=Path(__file__).resolve().parent.parent / "dagster.yaml"
    )


def _engine(settings: Settings):
    from backup_pipeline.platform import engine_for

    return engine_for(settings.platform_db_url)


def _ensure_local_dirs(settings: Settings) -> None:
    for url in (settings.platform_db_url,):
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def cmd_init_db(args: argparse.Namespace, settings: Settings) -> int:
    from backup_pipeline.platform import create_schema

    _ensure_local_dirs(settings)
    create_schema(_engine(settings))
    print("Schema created (platform tables; backup_* tables by our migrations).")
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from backup_pipeline.platform import migrations

    _ensure_local_dirs(settings)
    engine = _engine(settings)
    if args.check:
        waiting = migrations.pending(engine)
        if waiting:
            print(
                f"Our tables are behind: pending revisions {', '.join(waiting)}. "
                "Run `backup-pipeline migrate` before starting the code location."
            )
            return 1
        print(f"Our tables are up to date (revision {migrations.head()}).")
        return 0
    applied = migrations.upgrade(engine)
    if applied:
        print(f"Applied revisions {', '.join(applied)}; our tables are at {migrations.head()}.")
    else:
        print(f"Nothing to do: our tables are up to date (revision {migrations.head()}).")
    return 0


def cmd_seed(args: argparse.Namespace, settings: Settings) -> int:
    from backup_pipeline.platform import create_schema, next_subscription_id
    from backup_pipeline.resources.storage import open_store
    from backup_pipeline.synthetic import seed_platform

    _ensure_local_dirs(settings)
    engine = _engine(settings)
    create_schema(engine)
    summary = seed_platform(
        engine,
        open_store(settings.files_url),
        profile=args.profile,
        patients=args.patients,
        subscriptions=args.subscriptions,
        seed=args.seed,
        first_subscription_id=args.first_subscription_id or next_subscription_id(engine),
    )
    for sid in summary.subscription_ids:
        users = summary.user_ids.get(sid, [])
        print(f"subscription {sid}: authorised user ids {users}")
    for table, count in summary.counts.items():
        print(f"  {table}: {count}")
    print(f"  file bytes: {summary.file_bytes}")
    return 0


def cmd_request(args: argparse.Namespace, settings: Settings) -> int:
    from backup_pipeline import platform as db
    from backup_pipeline.synthetic import file_backup_request

    engine = _engine(settings)
    with engine.connect() as conn:
        subscription = db.get_subscription(conn, args.subscription)
        user = db.get_requester(conn, args.user)
    # The platform's button files requests only for its own users; a typo here would otherwise be
    # a database error. Whether the user may request is the request sensor's to decide.
    if subscription is None:
        print(f"error: subscription {args.subscription} does not exist", file=sys.stderr)
        return 2
    if user is None:
        print(f"error: user {args.user} does not exist", file=sys.stderr)
        return 2
    request_id = file_backup_request(engine, subscription_id=args.subscription, user_id=args.user)
    print(f"Filed backup request {request_id} (pending).")
    return 0


def cmd_prepare_instance(args: argparse.Namespace, settings: Settings | None) -> int:
    home = _ensure_dagster_home()
    print(f"Dagster instance ready in {home}.")
    return 0


def _launch(args: argparse.Namespace) -> Launch:
    from backup_pipeline.operations import Launch

    def submitted(run_id: str) -> None:
        # Printed at once: the CLI waits for the run, the operator can follow it in the UI.
        page = f"{args.dagster_url.rstrip('/')}/runs/{run_id}"
        print(f"Submitted run {run_id} to the deployment: {page}", flush=True)

    return Launch(dagster_url=args.dagster_url, verbose=args.verbose, on_submitted=submitted)


def _report_runs(start_runs: Callable[[], ProcessOutcome]) -> int:
    """Runs on $DAGSTER_HOME's instance; exit 1 if one failed, 2 when nothing could be launched
    (our tables are behind, a request that is done with, a daemon without its webserver)."""
    from backup_pipeline.operations import NotLaunched
    from backup_pipeline.platform.migrations import SchemaBehind
    from backup_pipeline.services.support_actions import SupportActionRefused

    _ensure_dagster_home()
    try:
        outcome = start_runs()
    except (SchemaBehind, NotLaunched, SupportActionRefused) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(outcome.summary())
    return 0 if outcome.ok else 1


def cmd_process(args: argparse.Namespace, settings: Settings) -> int:
    from backup_pipeline.operations import process_pending

    return _report_runs(
        lambda: process_pending(limit=args.limit, settings=settings, launch=_launch(args))
    )


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from backup_pipeline.operations import run_request

    return _report_runs(
        lambda: run_request(
            args.request_id,
            settings,
            reason=args.reason,
            override_quota=args.override_quota,
            override_reason=args.override_reason,
            launch=_launch(args),
        )
    )


def _support_action(act: Callable[[], str]) -> int:
    """One of support's jobs, run on $DAGSTER_HOME's instance as `process` runs backups (the same
    job support launches from the UI); exit 2 when it refuses, with its one line."""
    from backup_pipeline.operations import NotLaunched
    from backup_pipeline.services.delivery import DeliveryRefused
    from backup_pipeline.services.support_actions import SupportActionRefused

    _ensure_dagster_home()
    try:
        print(act())
    except (DeliveryRefused, SupportActionRefused, NotLaunched) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_resend_link(args: argparse.Namespace, settings: Settings) -> int:
    from backup_pipeline.operations import resend_link

    def act() -> str:
        resent = resend_link(args.request_id, args.reason, settings, _launch(args))
        return (
            f"New link sent for request {args.request_id}; "
            f"it expires at {resent:%Y-%m-%d %H:%M} UTC."
        )

    return _support_action(act)


def cmd_refuse(args: argparse.Namespace, settings: Settings) -> int:
    from backup_pipeline.operations import refuse_request

    def act() -> str:
        refuse_request(
            args.request_id, args.reason, args.message_to_clinic, settings, _launch(args)
        )
        return f"Request {args.request_id} refused."

    return _support_action(act)


def cmd_expire(args: argparse.Namespace, settings: Settings) -> int:
    from backup_pipeline.operations import expire_archive

    def act() -> str:
        deleted = expire_archive(args.request_id, args.reason, settings, _launch(args))
        what = "archive deleted" if deleted else "no archive was left to delete"
        return f"Request {args.request_id} expired ({what})."

    return _support_action(act)


def cmd_verify(args: argparse.Namespace, settings: Settings | None) -> int:
    """One zip, or every part of a very large account's archive: each part checks itself, then
    the whole (every part given, no two parts at odds, the totals of part 1's LEEME.txt)."""
    from backup_pipeline.archive.verify import verify_archive

    report = verify_archive([Path(name) for name in args.zip])
    several = len(args.zip) > 1
    for name, zip_report in report.zips:
        which = f" (part {zip_report.part} of {zip_report.parts})" if zip_report.parts > 1 else ""
        for problem in zip_report.problems:
            print(f"MISMATCH: {problem}" + (f" in {name}" if several else ""))
        for note in zip_report.unreadable_cfdi:
            print(f"NOTE: {note} (copied as the platform stored it)")
        if zip_report.ok:
            print(
                f"OK: {name}{which} is intact, every entry matches its checksum file and every "
                "workbook opens."
            )
    for missing in report.missing_parts:
        print(
            f"MISSING: {missing}: give every part of the archive (se necesitan todas las partes)."
        )
    for problem in report.problems:
        print(f"MISMATCH: {problem}")
    if report.ok and report.parts > 1:
        print(
            f"OK: all {report.parts} parts are here; they merge without loss and hold every "
            "file LEEME.txt counts."
        )
    return 0 if report.ok else 1


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from backup_pipeline.operations import NotLaunched, demo

    _ensure_local_dirs(settings)
    _ensure_dagster_home()
    try:
        result = demo(settings, launch=_launch(args))
    except NotLaunched as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0 if result.ok else 1


# `make dev`'s webserver: where a deployment is found when a daemon serves $DAGSTER_HOME.
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"


def _add_launch_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--dagster-url",
        default=DEFAULT_DAGSTER_URL,
        help="the deployment's Dagster webserver, used when a daemon serves $DAGSTER_HOME: runs "
        "are submitted there, into the run queue (default: %(default)s, `make dev`'s)",
    )
    command.add_argument(
        "--verbose",
        action="store_true",
        help="every Dagster event (DEBUG) of a run executed here, not only its INFO lines",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backup-pipeline",
        description="Respaldo de información: clinic backups as a Dagster code location.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("init-db", help="create the schema in an empty database (dev and tests)")

    migrate = sub.add_parser(
        "migrate", help="create or upgrade our backup_* tables (never a platform table)"
    )
    migrate.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit non-zero naming the pending revisions, if any",
    )

    seed = sub.add_parser(
        "seed", help="fill the platform database and files with synthetic clinics"
    )
    seed.add_argument("--profile", default="small", choices=["small", "medium", "large"])
    seed.add_argument("--patients", type=int, default=None, help="scale everything to N patients")
    seed.add_argument("--subscriptions", type=int, default=1)
    seed.add_argument("--seed", type=int, default=0)
    seed.add_argument("--first-subscription-id", type=int, default=None)

    request = sub.add_parser("request", help="file a pending backup request as the platform would")
    request.add_argument("--subscription", type=int, required=True)
    request.add_argument("--user", type=int, required=True)

    process = sub.add_parser(
        "process", help="one evaluation of the request sensor, then run what it asked for"
    )
    process.add_argument("--limit", type=int, default=None)
    _add_launch_options(process)

    run = sub.add_parser(
        "run",
        help="run the backup of one request here; a failed one is re-run as rerun_request_job "
        "does (quota re-checked)",
    )
    run.add_argument("request_id", type=int)
    run.add_argument(
        "--reason",
        default="re-run with `backup-pipeline run`",
        help="why, for the audit trail (a failed request's re-run)",
    )
    run.add_argument("--override-quota", action="store_true", help="re-run past the quota")
    run.add_argument("--override-reason", default="", help="why the quota is overridden")
    _add_launch_options(run)

    resend = sub.add_parser(
        "resend-link", help="a fresh link and email while the archive exists (resend_link_job)"
    )
    resend.add_argument("request_id", type=int)
    resend.add_argument("--reason", required=True, help="why, for the audit trail")
    _add_launch_options(resend)

    refuse = sub.add_parser("refuse", help="refuse a pending request (refuse_request_job)")
    refuse.add_argument("request_id", type=int)
    refuse.add_argument("--reason", required=True, help="why, for the audit trail")
    refuse.add_argument(
        "--message-to-clinic", default="", help="what the clinic reads (Spanish, 'usted')"
    )
    _add_launch_options(refuse)

    expire = sub.add_parser(
        "expire", help="delete a delivered request's archive now (expire_archive_job)"
    )
    expire.add_argument("request_id", type=int)
    expire.add_argument("--reason", required=True, help="why, for the audit trail")
    _add_launch_options(expire)

    verify = sub.add_parser(
        "verify",
        help="check a backup zip, or every part of one archive, against its checksum files",
    )
    verify.add_argument("zip", nargs="+", help="a zip, or every part of one archive")

    demo = sub.add_parser(
        "demo", help="seed a small clinic, request and deliver its backup locally"
    )
    _add_launch_options(demo)
    sub.add_parser(
        "prepare-instance",
        help="create, upgrade or repair the embedded Dagster instance on $DAGSTER_HOME",
    )
    return parser


# Commands that read no setting: they run whatever the BACKUP_* variables hold (a zip is checked
# on a support laptop whose environment is someone else's).
WITHOUT_SETTINGS = frozenset({"verify", "prepare-instance"})

COMMANDS = {
    "init-db": cmd_init_db,
    "migrate": cmd_migrate,
    "seed": cmd_seed,
    "request": cmd_request,
    "process": cmd_process,
    "run": cmd_run,
    "resend-link": cmd_resend_link,
    "refuse": cmd_refuse,
    "expire": cmd_expire,
    "verify": cmd_verify,
    "demo": cmd_demo,
    "prepare-instance": cmd_prepare_instance,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = None
    if args.command not in WITHOUT_SETTINGS:
        try:
            settings = Settings.from_env()
        except SettingsError as exc:
            # Before anything is touched: one line naming the variable, exit 2 like a bad argument.
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return COMMANDS[args.command](args, settings)


if __name__ == "__main__":
    sys.exit(main())
