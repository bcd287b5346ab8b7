"""The console's routes, installed on the API app."""

from fastapi import FastAPI


def install(api: FastAPI) -> None:
    """Add the console's routes (/ui/…, /reports, /request-key) to `api`."""
