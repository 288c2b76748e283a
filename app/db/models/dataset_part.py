from sqlalchemy import Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base


class DatasetPart(Base):
    """A dataset's stored file, in order, a megabyte per row.

    Kept apart from `datasets` and in pieces so that reading a dataset (training, batch
    prediction, a download) holds one piece in memory at a time, and a job can write its
    result piece by piece before the dataset row that makes it visible exists. No foreign
    key for that reason: the dataset's delete removes its parts in the same transaction.
    """

    __tablename__ = "dataset_parts"

    dataset_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)
