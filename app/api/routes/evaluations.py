"""A version's stored evaluations, and versions compared side by side."""

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.api.deps import AfterQuery, LimitQuery, ReadSessionDep
from app.schemas.common import MAX_INT32, Page, problem_responses
from app.schemas.evaluations import CompareRead, EvaluationRead
from app.services import evaluations as evaluations_service

router = APIRouter(prefix="/models", tags=["models"])

VersionPath = Annotated[int, Path(ge=1, le=MAX_INT32)]


@router.get(
    "/{name}/versions/{version}/evaluations",
    response_model=Page[EvaluationRead],
    summary="A version's evaluations",
    responses=problem_responses(404),
)
def list_version_evaluations(
    session: ReadSessionDep,
    name: str,
    version: VersionPath,
    limit: LimitQuery = 50,
    after: AfterQuery = None,
) -> Page[EvaluationRead]:
    """Scores of this version from evaluation jobs (`POST /v1/jobs/evaluation`), newest
    first, each naming the dataset (and its sha256) it was measured on."""
    rows, has_more = evaluations_service.list_for_version(
        session, name, version, limit=limit, after=after
    )
    return Page[EvaluationRead](
        data=[EvaluationRead.model_validate(evaluations_service.to_read(row)) for row in rows],
        has_more=has_more,
    )


@router.get(
    "/{name}/compare",
    response_model=CompareRead,
    summary="Compare versions side by side",
    responses=problem_responses(404, 422),
)
def compare_versions(
    session: ReadSessionDep,
    name: str,
    versions: Annotated[
        str,
        Query(
            pattern=r"^[1-9][0-9]{0,9}( *, *[1-9][0-9]{0,9}){0,19}$",
            description="Version numbers separated by commas, e.g. `1,2` (at most 20).",
        ),
    ],
    include_base: Annotated[
        bool,
        Query(
            description="Add the base version of each fine-tuned version (often of another "
            "model), so a fine-tune is shown beside what it started from."
        ),
    ] = True,
) -> CompareRead:
    """Each version's training figures (validation metrics, transfer report) and, per
    dataset it was evaluated on, every version's latest scores side by side with the best
    one named: evaluate a fine-tuned version and its base on the target data
    (`POST /v1/jobs/evaluation` with `include_base`) to see what the fine-tune gained."""
    numbers = evaluations_service.parse_versions(versions)
    return CompareRead.model_validate(
        evaluations_service.compare(session, name, numbers, include_base=include_base)
    )
