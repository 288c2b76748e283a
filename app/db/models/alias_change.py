from datetime import datetime

from sqlalchemy import Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime


class AliasChange(Base):
    """One move of an alias: where it pointed before and after, when, and by which key.

    No foreign key to the versions: the history outlives a deleted version. It goes with
    its model (a new model of the same name starts with none).
    """

    __tablename__ = "alias_changes"
    # An alias's history, newest first, as a keyset page; and its latest change (rollback).
    __table_args__ = (Index("ix_alias_changes_model_name_alias_id", "model_name", "alias", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(200))
    alias: Mapped[str] = mapped_column(String(100))
    # "set", "rollback" or "delete".
    action: Mapped[str] = mapped_column(String(16))
    # None before: the alias was created; None after: it was deleted.
    previous_version: Mapped[int | None] = mapped_column(Integer)
    version: Mapped[int | None] = mapped_column(Integer)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The API key that moved it (None: auth disabled, or the CLI on the database).
    changed_by: Mapped[str | None] = mapped_column(String(40))
