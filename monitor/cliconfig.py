"""The config as every command loads it: found (`-c FILE`, ./monitor.yaml or
./config/monitor.yaml), validated, its `${VAR}` secrets registered so no output shows them;
an invalid one reported on standard error (a JSON log record with `--log-format json`)."""

from __future__ import annotations

import logging
import sys

from monitor.config import find_config, load_config
from monitor.errors import ConfigError
from monitor.logs import register_secret
from monitor.models import Config

log = logging.getLogger("monitor.cli")


def load_for_command(explicit: str | None, *, json_logs: bool = False) -> Config | None:
    """The config, or None once its errors are reported (the command then exits 2)."""
    try:
        config = load_config(find_config(explicit))
    except ConfigError as exc:
        report_invalid(exc, json_logs=json_logs)
        return None
    for secret in config.secrets:
        register_secret(secret)
    return config


def report_invalid(exc: ConfigError, *, json_logs: bool = False) -> None:
    """Say why the config is refused: every problem with its file, line and key."""
    if json_logs:
        log.error("invalid config:\n%s", exc)
    else:
        print(f"invalid config:\n{exc}", file=sys.stderr)
