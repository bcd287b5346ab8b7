"""Log set-up: stderr and, if configured, a rotating log file.

Application messages are text lines ("time LEVEL logger: message"); the request log
(`spendgate.requests`, see `request_log`) writes ready-made JSON lines, passed through as they are.
"""

import logging
from logging.handlers import RotatingFileHandler

from spendgate.config import Settings

REQUEST_LOGGER = "spendgate.requests"


class LineFormatter(logging.Formatter):
    """Text for application messages; the request log's JSON lines unchanged."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == REQUEST_LOGGER:
            return record.getMessage()
        return super().format(record)


def configure_logging(settings: Settings) -> None:
    """Log to stderr and, if SPENDGATE_LOG_PATH is set, to that file, rotated by size.

    Raises OSError when the file cannot be opened.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if settings.log_path is not None:
        handlers.append(
            RotatingFileHandler(
                settings.log_path, maxBytes=settings.log_max_bytes, backupCount=settings.log_backups
            )
        )
    formatter = LineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in handlers:
        handler.setFormatter(formatter)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)
