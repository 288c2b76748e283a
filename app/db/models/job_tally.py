from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base


class JobTally(Base):
    """Running counts of jobs, so a quota check reads a few rows whatever the jobs table holds.

    Kept by database triggers on `jobs` (migration f1b3d5e7a9c1), in the transaction that
    inserts, deletes or changes the status of a job, so no code path can forget one.
    `queued`: jobs waiting. `active:<key id>`: a key's queued and running jobs. A count is
    the sum over its slots: on PostgreSQL each connection adds to its own slot of `queued`,
    so concurrent submissions do not queue on one row lock; a slot alone may go negative.
    """

    __tablename__ = "job_tallies"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    jobs: Mapped[int] = mapped_column(Integer)
