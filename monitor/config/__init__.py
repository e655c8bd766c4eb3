"""Configuration loading: YAML file -> validated, frozen `Config`, or every problem at once."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from monitor.config.convert import build
from monitor.config.units import parse_duration, parse_size
from monitor.config.yamlsource import Reporter, read_yaml
from monitor.errors import ConfigError, ConfigProblem
from monitor.models import Config

__all__ = ["find_config", "load_config", "parse_duration", "parse_size"]

_LOOKED_FOR = "no config file: looked for ./monitor.yaml and ./config/monitor.yaml; pass -c FILE"


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and convert one config file.

    `env` (default `os.environ`) supplies `${NAME}` substitutions. Raises `ConfigError` listing
    every problem found, each with file, line and key path; no variable's value appears in them.
    """
    absolute = Path(os.path.abspath(path))
    report = Reporter(os.fspath(path))
    data = read_yaml(absolute, os.environ if env is None else env, report)
    config = build(data, report, absolute) if data is not None else None
    if report.problems or config is None:
        raise ConfigError(report.problems)
    return dataclasses.replace(config, secrets=report.secret_values)


def find_config(explicit: str | None) -> Path:
    """The config file to use: `explicit` if given, else ./monitor.yaml, else
    ./config/monitor.yaml; raises `ConfigError` when there is none."""
    if explicit:
        return Path(explicit)
    for candidate in (Path("monitor.yaml"), Path("config", "monitor.yaml")):
        if candidate.is_file():
            return candidate.absolute()
    raise ConfigError([ConfigProblem("", 0, "", _LOOKED_FOR)])
