"""Typed dependencies: the runtime, admin auth and gateway-key auth."""

from typing import Annotated

from fastapi import Depends, Request

from spendgate.errors import AdminAuthRequired
from spendgate.keys.material import same_secret
from spendgate.keys.principals import Principal
from spendgate.proxy.headers import client_key
from spendgate.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    """The app's runtime."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def require_admin(request: Request, runtime: RuntimeDep) -> None:
    """Refuse unless the request carries the admin token (none configured: refuse all)."""
    token = runtime.settings.admin_token
    given = request.headers.get("x-admin-token")
    if given is None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        given = credentials.strip() if scheme.lower() == "bearer" else None
    if token is None or not given or not same_secret(given, token.get_secret_value()):
        raise AdminAuthRequired("Admin token missing or wrong.")


AdminDep = Depends(require_admin)


async def get_principal(request: Request, runtime: RuntimeDep) -> Principal:
    """The caller's principal from its gateway key."""
    return await runtime.principals.authenticate(client_key(request.scope["headers"]))


PrincipalDep = Annotated[Principal, Depends(get_principal)]
