from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from app.api.deps import AfterQuery, KeyIdDep, LimitQuery, ReadSessionDep, SessionDep
from app.errors import Invalid
from app.schemas.common import Page, problem_responses
from app.schemas.keys import KeyCreate, KeyCreated, KeyRead
from app.services import keys as keys_service

router = APIRouter(prefix="/keys", tags=["keys"])

IncludeRevoked = Annotated[
    bool, Query(description="Include revoked keys (with their `revoked_at`), for an audit.")
]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    summary="Create an API key",
    responses=problem_responses(422),
)
def create_key(
    session: SessionDep, request: Request, body: KeyCreate, key_id: KeyIdDep
) -> KeyCreated:
    """A new key with the given scopes; its `secret` is in this response and nowhere else."""
    if body.expires_at is not None and body.expires_at.tzinfo is None:
        raise Invalid("invalid_expiry", "expires_at needs a time zone, e.g. 2027-01-01T00:00:00Z")
    row, secret = keys_service.create_key(
        session, name=body.name, scopes=body.scopes, expires_at=body.expires_at, created_by=key_id
    )
    session.commit()
    request.app.state.keyring.changed()
    return KeyCreated.model_validate({**KeyRead.model_validate(row).model_dump(), "secret": secret})


@router.get("", response_model=Page[KeyRead], summary="List API keys")
def list_keys(
    session: ReadSessionDep,
    limit: LimitQuery = 50,
    after: AfterQuery = None,
    include_revoked: IncludeRevoked = False,
) -> Page[KeyRead]:
    """Keys, newest first; never their secrets. Revoked keys only with include_revoked."""
    rows, has_more = keys_service.list_keys(
        session, limit=limit, after=after, include_revoked=include_revoked
    )
    return Page[KeyRead](data=[KeyRead.model_validate(r) for r in rows], has_more=has_more)


@router.get(
    "/{key_id}", response_model=KeyRead, summary="Get an API key", responses=problem_responses(404)
)
def get_key(session: ReadSessionDep, key_id: str) -> KeyRead:
    """One key's name, scopes, expiry and last use; once revoked it is gone (404
    key_revoked) and only `GET /v1/keys?include_revoked=true` lists it, for an audit."""
    return KeyRead.model_validate(keys_service.get_key(session, key_id))


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke an API key",
    responses=problem_responses(404, 409),
)
def revoke_key(session: SessionDep, request: Request, key_id: str) -> Response:
    """Revoke a key: from the next request on, in every API process, it answers 401."""
    keys_service.revoke_key(session, key_id)
    session.commit()
    request.app.state.keyring.changed()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
