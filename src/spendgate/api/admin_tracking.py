"""Admin API: tracking tokens for client-push ingestion."""

from fastapi import APIRouter

from spendgate.api.deps import AdminDep

router = APIRouter(
    prefix="/admin/tracking-tokens", tags=["admin: tracking tokens"], dependencies=[AdminDep]
)
