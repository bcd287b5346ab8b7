"""Public API: self-service key requests (only when SPENDGATE_SELF_SERVICE=true)."""

from fastapi import APIRouter

router = APIRouter(prefix="/public", tags=["public"])
