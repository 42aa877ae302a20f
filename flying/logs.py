"""structlog JSON logging, configured once per process (spawned workers call it too)."""
from __future__ import annotations

import logging
import os
import sys

import structlog

_configured = False


def configure(component: str = "", level: str | None = None) -> None:
    global _configured
    if _configured:
        return
    level_name = (level or os.environ.get("FLYING_LOG_LEVEL", "INFO")).upper()
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level_name, logging.INFO),
                        format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level_name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    if component:
        structlog.contextvars.bind_contextvars(component=component, pid=os.getpid())
    _configured = True


def get(name: str = "flying"):
    return structlog.get_logger(name)
