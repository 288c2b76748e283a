"""The registry layer: registered models, their numbered versions, aliases with their
history, and which version a request means. Routes, the prediction path, the fast lane and
the jobs all go through it:

- `models`: a name's row, summaries (latest version, aliases), delete;
- `versions`: register (with lineage), read, list, delete;
- `aliases`: set, move, roll back, history;
- `resolution`: `resolve` (the ORM path) and, for predictions on every request,
  `RegistryView` and `VersionLookup`.
"""

from app.services.registry.aliases import (
    DEFAULT_ALIAS,
    alias_history,
    check_alias_target,
    delete_alias,
    rollback_alias,
    set_alias,
    validate_alias_name,
)
from app.services.registry.models import (
    delete_model,
    get_model,
    latest_version,
    list_models,
    model_summaries,
)
from app.services.registry.resolution import RegistryView, VersionLookup, resolve
from app.services.registry.versions import (
    aliases_of_version,
    aliases_of_versions,
    dataset_ref,
    delete_version,
    get_version,
    list_versions,
    register_version,
    register_versions,
)

__all__ = [
    "DEFAULT_ALIAS",
    "RegistryView",
    "VersionLookup",
    "alias_history",
    "aliases_of_version",
    "aliases_of_versions",
    "check_alias_target",
    "dataset_ref",
    "delete_alias",
    "delete_model",
    "delete_version",
    "get_model",
    "get_version",
    "latest_version",
    "list_models",
    "list_versions",
    "model_summaries",
    "register_version",
    "register_versions",
    "resolve",
    "rollback_alias",
    "set_alias",
    "validate_alias_name",
]
