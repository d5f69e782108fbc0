"""Configuration read by every process: settings from the environment and Celery's."""

from config.settings import ConfigError, Settings, load, stop

__all__ = ["ConfigError", "Settings", "load", "stop"]
