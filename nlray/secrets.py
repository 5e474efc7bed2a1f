"""Secrets never leave the process in what nlray writes: MLflow params, tags and artifacts, log lines, messages.

    redact("http://user:pw@head:5000")    -> "http://***@head:5000"
    redact(f"key {os.environ['AWS_SECRET_ACCESS_KEY']}")  -> "key ***"
    move_userinfo_to_env("http://alice:pw@head:5000")     -> "http://head:5000", MLFLOW_TRACKING_PASSWORD=pw

Credentials are kept out of the config tree: a tracking URI's ``user:password@`` is moved into the
environment that MLflow reads (``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``) before the config exists, so
no saved config, Ray Train state export or log line holds it. ``redact`` is the second line: whatever is
logged or printed has URL userinfo (with or without a scheme, raw or percent-encoded), signed-URL query
values and the values of SECRET_ENV (and of every credential moved here) replaced by ``***``.
"""
from __future__ import annotations

import os
import re
from typing import Optional
from urllib.parse import quote, unquote, urlsplit, urlunsplit

MASK = "***"
# Environment variables whose values are credentials: AWS keys, MLflow's basic-auth password and bearer
# token, Ray's cluster token.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_PASSWORD",
              "MLFLOW_TRACKING_TOKEN", "RAY_AUTH_TOKEN")
# Shorter values are too common to be secret (moto's "testing"): replacing them would mangle ordinary text.
MIN_SECRET_LEN = 8
_KNOWN: set[str] = set()  # credentials taken out of URIs in this process (move_userinfo_to_env)

# The end of a host[:port] after "@": a name or [IPv6], an optional port, then a delimiter or the end.
_HOST_END = r"(?:[\w.-]+|\[[0-9A-Fa-f:.]+\])(?::\d*)?(?=[/?#\s'\"<>),;\]]|$)"
# Object-store schemes, whose keys may hold "@": their userinfo ends where RFC 3986's authority does.
_PATH_SCHEMES = r"s3|s3a|s3n|gs|gcs|file|hdfs|abfss?|wasbs?|az"
_USERINFO_PATH = re.compile(rf"(?P<scheme>\b(?:{_PATH_SCHEMES})://)(?P<userinfo>[^/?#\s'\"<>@]*@)", re.I)
# Other schemes: a password may hold / ? # @ (malformed, but seen): the userinfo runs to the last "@" before
# any / ? # that a host[:port] and a delimiter follow, else to the first such "@" past them.
_USERINFO = re.compile(rf"(?P<scheme>\b(?!(?:{_PATH_SCHEMES})://)[A-Za-z][A-Za-z0-9+.-]*://)"
                       rf"(?P<userinfo>(?:[^\s'\"<>/?#]*@(?={_HOST_END})|[^\s'\"<>]*?@(?={_HOST_END})))", re.I)
# user:password@host with no scheme (an endpoint given as host:port): a colon in the userinfo is required.
_BARE_USERINFO = re.compile(rf"(?<![\w/:@.%*-])[\w.~!$&+,;=%-]+:[^\s'\"<>@/]+@(?={_HOST_END})")
# A percent-encoded URI's userinfo: scheme%3A%2F%2F ... %40.
_ENCODED_HOST_END = r"(?:[\w.-]+|%5B[0-9A-Fa-f%:.]+%5D)(?:%3A\d*)?(?=%2F|%3F|%23|[\s'\"<>&),;]|$)"
_ENCODED_USERINFO = re.compile(rf"(?P<scheme>\b[A-Za-z](?:[A-Za-z0-9.-]|%2B)*%3A%2F%2F)(?P<userinfo>[^\s'\"<>&]*?%40)"
                               rf"(?={_ENCODED_HOST_END})", re.I)
# Signed-URL and token query values: ?token=, X-Amz-Signature=, X-Amz-Security-Token=, sig=, password= ...
_QUERY_SECRET = re.compile(r"(?P<key>[?&;](?:[\w.-]*(?:token|signature|secret|password|passwd|credential|"
                           r"api[_-]?key|access[_-]?key)[\w.-]*|sig)=)(?P<value>[^&#\s'\"<>]+)", re.I)


def redact(text: str) -> str:
    """``text`` with URL userinfo, signed-URL query values and known secret values replaced by ``***``."""
    text = str(text)
    for value in _secret_values():  # by value first: a password with a space is found whole
        for form in {value, quote(value, safe=""), quote(value)}:
            text = text.replace(form, MASK)
    text = _USERINFO_PATH.sub(lambda m: m.group("scheme") + MASK + "@", text)
    text = _USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", text)
    text = _ENCODED_USERINFO.sub(lambda m: m.group("scheme") + MASK + "%40", text)
    text = _BARE_USERINFO.sub(MASK + "@", text)
    return _QUERY_SECRET.sub(lambda m: m.group("key") + MASK, text)


def _secret_values() -> list[str]:
    values = {os.environ.get(var, "") for var in SECRET_ENV} | _KNOWN
    return sorted((v for v in values if len(v) >= MIN_SECRET_LEN), key=len, reverse=True)


def remember(secret: str) -> None:
    """Mask ``secret`` (and its URL-quoted forms) in everything redacted from now on, whatever its length."""
    if secret:
        _KNOWN.add(secret)


def split_userinfo(uri: str) -> tuple[str, Optional[str], Optional[str]]:
    """``(uri without user:password@, user, password)``, the two percent-decoded; (uri, None, None) if none."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, sep, password = userinfo.partition(":")
    return (urlunsplit(parts._replace(netloc=host)), unquote(user) or None,
            unquote(password) if sep else None)


def move_userinfo_to_env(uri: str, *, user_var: str = "MLFLOW_TRACKING_USERNAME",
                         password_var: str = "MLFLOW_TRACKING_PASSWORD") -> str:
    """The tracking URI without its ``user:password@``; the two go into the environment MLflow reads
    (and into this process's redaction), so the config tree never holds them."""
    clean, user, password = split_userinfo(uri)
    if user is not None:
        os.environ[user_var] = user
    if password is not None:
        remember(os.environ.get(password_var, ""))  # a password the environment held before stays masked
        os.environ[password_var] = password
        remember(password)
    return clean


def credential_env() -> dict[str, str]:
    """The MLflow credentials of this process's environment, for processes that do not inherit it (Ray Train
    workers on other nodes): handed over as an object, never in a config or a runtime_env."""
    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
    return {k: os.environ[k] for k in names if os.environ.get(k)}


def adopt_credential_env(env: dict[str, str]) -> None:
    """In a worker: take the driver's MLflow credentials (``credential_env``), and mask them in its output."""
    for key, value in env.items():
        os.environ[key] = value
        if key.endswith(("PASSWORD", "TOKEN")):
            remember(value)
