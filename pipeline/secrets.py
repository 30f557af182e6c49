"""Passwords never reach the tracking store: a URL carrying one is refused as a parameter, and any
storage URL is logged with its password masked."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from sqlalchemy.engine import make_url

from pipeline.errors import UserError

SECRET_QUERY_KEYS = {"password", "passwd", "pwd", "pass"}


def has_secret(value: str) -> bool:
    """A URL carrying a password, in its user part (`u:pw@host`) or its query (`?password=pw`)."""
    try:
        parts = urlsplit(value)
        return bool(parts.password) or any(key.lower() in SECRET_QUERY_KEYS for key in parse_qs(parts.query, keep_blank_values=True))
    except ValueError:
        return False


def storage_url(name: str, value: str) -> str:
    """An Optuna storage URL without a password: parameters are logged, so a password in one
    would be stored in the tracking server for anyone to read."""
    if has_secret(value):
        raise UserError(
            f"{name} must not contain a password (parameters are logged in MLflow); give e.g. "
            "postgresql://user@host/optuna and set PGPASSWORD (or ~/.pgpass), or put the whole URL in the environment "
            "variable CXR_OPTUNA_STORAGE and leave storage empty. If `mlflow run` started this, the parameter it recorded "
            "has been masked in its run"
        )
    return value


def safe_url(url: str) -> str:
    """The storage URL with any password masked (user part and query), fit to log."""
    try:
        parsed = make_url(url)
    except Exception:
        return url.split("@")[-1].split("?")[0]
    query = {k: ("***" if k.lower() in SECRET_QUERY_KEYS else v) for k, v in parsed.query.items()}
    return parsed.set(query=query).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")
