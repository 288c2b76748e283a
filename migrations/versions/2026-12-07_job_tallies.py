"""Job tallies kept by triggers: the queue bound and a key's quota read a few rows instead
of counting jobs, whatever the limits are set to. Replaces the (created_by, status) index
that the per-key count used.

Revision ID: f1b3d5e7a9c1
Revises: e9f1a3b5c7d9
Create Date: 2026-12-07 11:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f1b3d5e7a9c1"
down_revision: str | None = "e9f1a3b5c7d9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here as they were when this ran: the statuses that hold a place in the queue
# ('queued') and count against a key's quota ('queued', 'running').
_ACTIVE = "('queued', 'running')"
_ADD = "ON CONFLICT (name, slot) DO UPDATE SET jobs = job_tallies.jobs + excluded.jobs"

# SQLite has one writer at a time: one slot is enough.
_SQLITE_TRIGGERS = [
    f"""
    CREATE TRIGGER jobs_tally_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO job_tallies (name, slot, jobs)
            SELECT 'queued', 0, 1 WHERE NEW.status = 'queued' {_ADD};
        INSERT INTO job_tallies (name, slot, jobs)
            SELECT 'active:' || NEW.created_by, 0, 1
            WHERE NEW.created_by IS NOT NULL AND NEW.status IN {_ACTIVE} {_ADD};
    END
    """,
    f"""
    CREATE TRIGGER jobs_tally_update AFTER UPDATE OF status, created_by ON jobs BEGIN
        INSERT INTO job_tallies (name, slot, jobs)
            SELECT 'queued', 0, (NEW.status = 'queued') - (OLD.status = 'queued')
            WHERE (NEW.status = 'queued') <> (OLD.status = 'queued') {_ADD};
        INSERT INTO job_tallies (name, slot, jobs)
            SELECT 'active:' || OLD.created_by, 0, -1
            WHERE OLD.created_by IS NOT NULL AND OLD.status IN {_ACTIVE}
              AND NOT (NEW.status IN {_ACTIVE} AND NEW.created_by IS OLD.created_by) {_ADD};
        INSERT INTO job_tallies (name, slot, jobs)
            SELECT 'active:' || NEW.created_by, 0, 1
            WHERE NEW.created_by IS NOT NULL AND NEW.status IN {_ACTIVE}
              AND NOT (OLD.status IN {_ACTIVE} AND NEW.created_by IS OLD.created_by) {_ADD};
    END
    """,
    f"""
    CREATE TRIGGER jobs_tally_delete AFTER DELETE ON jobs BEGIN
        INSERT INTO job_tallies (name, slot, jobs)
            SELECT 'queued', 0, -1 WHERE OLD.status = 'queued' {_ADD};
        INSERT INTO job_tallies (name, slot, jobs)
            SELECT 'active:' || OLD.created_by, 0, -1
            WHERE OLD.created_by IS NOT NULL AND OLD.status IN {_ACTIVE} {_ADD};
    END
    """,
]

# PostgreSQL: each connection adds to the `queued` slot its backend pid picks, so concurrent
# submissions touch different rows, and one transaction only ever locks one queued slot
# (no deadlock between transactions that change several jobs).
_POSTGRES_FUNCTION = f"""
CREATE FUNCTION graft_job_tallies() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    queued_delta integer := 0;
    old_key text;
    new_key text;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        queued_delta := queued_delta - (OLD.status = 'queued')::integer;
        IF OLD.status IN {_ACTIVE} THEN old_key := OLD.created_by; END IF;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        queued_delta := queued_delta + (NEW.status = 'queued')::integer;
        IF NEW.status IN {_ACTIVE} THEN new_key := NEW.created_by; END IF;
    END IF;
    IF queued_delta <> 0 THEN
        INSERT INTO job_tallies (name, slot, jobs)
        VALUES ('queued', pg_backend_pid() % 16, queued_delta) {_ADD};
    END IF;
    IF old_key IS DISTINCT FROM new_key THEN
        IF old_key IS NOT NULL THEN
            INSERT INTO job_tallies (name, slot, jobs) VALUES ('active:' || old_key, 0, -1) {_ADD};
        END IF;
        IF new_key IS NOT NULL THEN
            INSERT INTO job_tallies (name, slot, jobs) VALUES ('active:' || new_key, 0, 1) {_ADD};
        END IF;
    END IF;
    RETURN NULL;
END
$$
"""
_POSTGRES_TRIGGER = """
CREATE TRIGGER jobs_tally AFTER INSERT OR DELETE OR UPDATE OF status, created_by ON jobs
FOR EACH ROW EXECUTE FUNCTION graft_job_tallies()
"""

# The tallies of the jobs already there, taken in the same transaction as the triggers.
_BACKFILL = [
    "INSERT INTO job_tallies (name, slot, jobs) "
    "SELECT 'queued', 0, count(*) FROM jobs WHERE status = 'queued'",
    "INSERT INTO job_tallies (name, slot, jobs) "
    f"SELECT 'active:' || created_by, 0, count(*) FROM jobs "
    f"WHERE created_by IS NOT NULL AND status IN {_ACTIVE} GROUP BY created_by",
]


def upgrade() -> None:
    op.create_table(
        "job_tallies",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("slot", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("jobs", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", "slot", name=op.f("pk_job_tallies")),
    )
    if op.get_context().dialect.name == "postgresql":
        # No job may change between the backfill and the trigger taking over.
        op.execute("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")
        op.execute(_POSTGRES_FUNCTION)
        op.execute(_POSTGRES_TRIGGER)
    else:
        for trigger in _SQLITE_TRIGGERS:
            op.execute(trigger)
    for statement in _BACKFILL:
        op.execute(statement)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_created_by_status")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_created_by_status", ["created_by", "status"])
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER jobs_tally ON jobs")
        op.execute("DROP FUNCTION graft_job_tallies()")
    else:
        for name in ("jobs_tally_insert", "jobs_tally_update", "jobs_tally_delete"):
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table("job_tallies")
