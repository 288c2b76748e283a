"""The /v1 router, assembled from one router per resource."""

from fastapi import APIRouter

from app.api.routes import datasets, evaluations, jobs, keys, models, predictions

api_router = APIRouter(prefix="/v1")
# Predictions first: routes are matched in order, and predict is the hot path.
api_router.include_router(predictions.router)
api_router.include_router(datasets.router)
api_router.include_router(jobs.router)
api_router.include_router(models.router)
api_router.include_router(evaluations.router)
api_router.include_router(keys.router)
