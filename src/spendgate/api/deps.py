"""Typed dependencies: the runtime, admin auth and gateway-key auth."""

from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Request

from spendgate.errors import AdminAuthRequired
from spendgate.keys.material import same_secret
from spendgate.keys.principals import Principal
from spendgate.proxy.headers import client_key, credential_value
from spendgate.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    """The app's runtime."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def require_admin(request: Request, runtime: RuntimeDep) -> None:
    """Refuse unless the request carries the admin token (none configured: refuse all).

    Every admin credential sent (`X-Admin-Token`, `Authorization: Bearer`, each copy of a
    repeated one) must be the token: one right copy beside a wrong one is refused too.
    """
    token = runtime.settings.admin_token
    given = admin_credentials(request.scope["headers"])
    if token is None or not given:
        raise AdminAuthRequired("Admin token missing or wrong.")
    expected = token.get_secret_value()
    # every copy is compared (no early exit), so timing tells nothing about which failed
    matches = [same_secret(credential, expected) for credential in given]
    if not all(matches):
        raise AdminAuthRequired("Admin token missing or wrong.")


def admin_credentials(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Every non-empty admin credential in the headers: `X-Admin-Token`s and bearer tokens.

    A non-bearer `Authorization` counts as a (wrong) credential, never as absent.
    """
    found = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in (b"x-admin-token", b"authorization"):
            credential = credential_value(lowered, value)
            if credential:
                found.append(credential.decode("latin-1"))
    return found


AdminDep = Depends(require_admin)


async def get_principal(request: Request, runtime: RuntimeDep) -> Principal:
    """The caller's principal from its gateway key."""
    return await runtime.principals.authenticate(client_key(request.scope["headers"]))


PrincipalDep = Annotated[Principal, Depends(get_principal)]
