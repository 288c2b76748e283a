"""Model versions as files to take out of Graft (app/ml/export.py), kept for a while: a
version never changes, so its export is made once per format and process."""

import hashlib
import threading
from collections import OrderedDict

from sqlalchemy.orm import Session

from app.errors import Invalid
from app.ml.export import Exported, ExportError, ExportSource, export
from app.services import registry

_KEPT = 8
_cache: OrderedDict[tuple[str, str], tuple[Exported, str]] = OrderedDict()
_lock = threading.Lock()


def export_version(session: Session, name: str, version: int, fmt: str) -> tuple[Exported, str]:
    """The version as a self-contained file in `fmt`, and the file's sha256."""
    found = registry.get_version(session, name, version)
    key = (found.id, fmt)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    found = registry.get_version(session, name, version, with_weights=True)
    source = ExportSource(
        name=found.model_name,
        version=found.version,
        task=found.task,
        inputs=found.signature["inputs"],
        architecture=found.architecture,
        preprocessing=found.preprocessing,
        weights=found.weights,
        sha256=found.sha256,
    )
    try:
        exported = export(source, fmt)
    except ExportError as exc:
        raise Invalid("export_unsupported", str(exc)) from exc
    made = (exported, hashlib.sha256(exported.content).hexdigest())
    with _lock:
        _cache[key] = made
        while len(_cache) > _KEPT:
            _cache.popitem(last=False)
    return made
