"""What the console keeps for the life of the app: session codec, templates, assets."""

from dataclasses import dataclass

import jinja2
from starlette.requests import HTTPConnection

from spendgate.config import Settings
from spendgate.web.assets import Assets
from spendgate.web.session import SessionCodec


@dataclass(frozen=True, slots=True)
class ConsoleState:
    """Built once by `console.install` and kept on `app.state.console`."""

    settings: Settings
    codec: SessionCodec
    templates: jinja2.Environment
    assets: Assets


def console_state(connection: HTTPConnection) -> ConsoleState:
    """The app's console state."""
    state: ConsoleState = connection.app.state.console
    return state
