"""ORM models, one module per table; importing this package registers them all."""

from app.db.models.alias_change import AliasChange
from app.db.models.api_key import ApiKey
from app.db.models.dataset import Dataset
from app.db.models.dataset_part import DatasetPart
from app.db.models.job import Job
from app.db.models.job_event import JobEvent
from app.db.models.job_tally import JobTally
from app.db.models.model_alias import ModelAlias
from app.db.models.model_evaluation import ModelEvaluation
from app.db.models.model_version import ModelVersion
from app.db.models.registered_model import RegisteredModel
from app.db.models.webhook_delivery import WebhookDelivery

__all__ = [
    "AliasChange",
    "ApiKey",
    "Dataset",
    "DatasetPart",
    "Job",
    "JobEvent",
    "JobTally",
    "ModelAlias",
    "ModelEvaluation",
    "ModelVersion",
    "RegisteredModel",
    "WebhookDelivery",
]
