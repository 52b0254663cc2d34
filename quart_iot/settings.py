"""Service settings, read from the environment (and `.env`)."""

import ipaddress
import json
import re
import secrets
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Public-key signatures only: never `none`, never an HMAC whose secret could be a public key.
ASYMMETRIC_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
MIN_JWKS_REFRESH = 5.0  # seconds
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9.])?")
# The libpq parameters a DATABASE_URL may carry: those the driver (asyncpg) understands, which
# would otherwise send an unknown one to the server as a setting (a typo fails every connect).
DATABASE_URL_PARAMETERS = frozenset(
    {
        "host", "port", "dbname", "user", "password", "passfile", "sslmode", "sslcert",
        "sslkey", "sslrootcert", "sslcrl", "sslpassword", "ssl_min_protocol_version",
        "ssl_max_protocol_version", "target_session_attrs", "krbsrvname", "gsslib",
        "application_name",
    }
)  # fmt: skip


class SettingsError(Exception):
    """A setting is missing or malformed; the message is one line naming it."""


class Settings(BaseSettings):
    """Every setting of the service; tests build their own instead of reading the environment."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    # The store: exactly one of the two (a directory, or PostgreSQL).
    esp32_configs_dir: Path | None = None
    database_url: str | None = Field(default=None, repr=False)  # may hold a password
    # PostgreSQL (quart_iot/store/postgres/): the longest a request waits for the database
    # (then 503 STORAGE_UNAVAILABLE), the connections each process keeps, the longest a
    # connection attempt takes, and the server-side bound of one statement.
    db_timeout: float = Field(default=5.0, gt=0, le=300)
    db_pool_size: int = Field(default=10, ge=1, le=1000)
    db_connect_timeout: float = Field(default=5.0, gt=0, le=300)
    db_statement_timeout: float = Field(default=30.0, gt=0, le=86_400)
    cors_origins: Annotated[list[str], NoDecode] = []
    debug: bool = False
    secret_key: str = Field(default_factory=lambda: secrets.token_hex(32), repr=False)
    # The largest request body and the largest document stored or read: one number, so that
    # whatever a PUT was allowed to store can be read back.
    max_content_length: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    lock_timeout: float = Field(default=5.0, gt=0, le=60)
    # Version history (quart_iot/store/history.py): 0 versions turns it off; days may be
    # fractions.
    history_max_versions: int = Field(default=50, ge=0, le=10_000)
    history_max_days: float = Field(default=90.0, gt=0, le=36_500)
    # A bulk change (POST /api/configs/changes) whose filter selects more devices: 422.
    max_bulk_devices: int = Field(default=1000, ge=1, le=100_000)
    host: str = "127.0.0.1"
    port: int = Field(default=3201, ge=0, le=65535)
    log_level: str = "INFO"
    shutdown_timeout: float = Field(default=10.0, ge=0)
    allowed_hosts: Annotated[list[str], NoDecode] = []
    body_timeout: float = Field(default=10.0, gt=0)
    # A client that takes none of its answer for this long is disconnected (quart_iot/__main__.py).
    send_timeout: float = Field(default=60.0, ge=0.001, le=3600)
    # Long polls (`Prefer: wait=n`) wait at most this long; 0 turns waiting off.
    max_wait_seconds: int = Field(default=60, ge=0, le=3600)
    # Requests held open at once (long polls and event streams together), per process.
    max_waiters: int = Field(default=10_000, ge=1, le=1_000_000)
    # Of those, held for one token's subject (with access control on), and long polls on one
    # device's document (whoever holds them): one client cannot take them all.
    max_waiters_per_subject: int = Field(default=100, ge=1, le=1_000_000)
    max_waiters_per_device: int = Field(default=10, ge=1, le=1_000_000)
    events_heartbeat_seconds: float = Field(default=15.0, gt=0, le=3600)
    # Every event stream ends after this long (or when its token expires, if sooner); the
    # client reconnects with Last-Event-ID and misses nothing.
    events_max_seconds: float = Field(default=3600.0, gt=0, le=86_400)
    workers: int = Field(default=1, ge=1, le=64)

    mqtt_url: str | None = Field(default=None, repr=False)  # may hold a password
    mqtt_username: str | None = None
    mqtt_password: str | None = Field(default=None, repr=False)
    mqtt_topic: str = "iotsupport/updates/configs"
    mqtt_queue_size: int = Field(default=1000, gt=0)

    # Access control (quart_iot/oidc/): off unless OIDC_ISSUER is set.
    oidc_allow_http_issuer: bool = False  # before oidc_issuer: its check reads this one
    oidc_issuer: str | None = None
    oidc_audience: str | None = Field(default=None, validate_default=True)
    oidc_roles_claim: str = "realm_access.roles"
    oidc_read_role: str = "iot-config-reader"
    oidc_write_role: str = "iot-config-writer"
    oidc_device_claim: str = "device_mac"
    oidc_algorithms: Annotated[list[str], NoDecode] = list(ASYMMETRIC_ALGORITHMS)
    oidc_allow_plain_jwt: bool = False
    oidc_leeway: float = Field(default=30.0, ge=0, le=300)
    oidc_http_timeout: float = Field(default=5.0, gt=0, le=60)
    # A floor: every unknown `kid` anyone sends may cause a fetch, once per this interval.
    oidc_jwks_min_refresh: float = Field(default=30.0, ge=MIN_JWKS_REFRESH)
    oidc_jwks_max_age: float = Field(default=3600.0, gt=0)

    @field_validator("esp32_configs_dir", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must be the path of the configs directory, not empty")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # DATABASE_URL= (empty): the directory store
        check_database_url(value.strip())
        return value.strip()

    @model_validator(mode="after")
    def _one_store(self) -> "Settings":
        if (self.esp32_configs_dir is None) == (self.database_url is None):
            state = "neither is set" if self.esp32_configs_dir is None else "both are set"
            raise ValueError(
                "set exactly one of ESP32_CONFIGS_DIR (a directory) and DATABASE_URL "
                f"(PostgreSQL); {state}"
            )
        return self

    @field_validator("secret_key")
    @classmethod
    def _check_secret_key(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty (leave it unset for a random key)")
        return value

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        # An IP literal (IPv6 without brackets) or a host name; not a URL, no port.
        if ":" in value:
            try:
                ipaddress.IPv6Address(value)
            except ValueError:
                raise ValueError("must be an IP address or a host name, without port") from None
        elif not _HOST_NAME.fullmatch(value):
            raise ValueError("must be an IP address or a host name, e.g. 0.0.0.0")
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str | None) -> str | None:
        # The messages never repeat the URL: it may hold a password.
        if value is None or not value.strip():
            return None  # MQTT_URL= (empty) leaves notifications off
        url = urlsplit(value.strip())
        usage = "must be mqtt://host[:port] or mqtts://host[:port]"
        if url.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"{usage} (unknown scheme)")
        try:
            port = url.port
        except ValueError:
            raise ValueError(f"{usage} (bad port)") from None
        if port == 0 or not url.hostname or url.path not in ("", "/") or url.query:
            raise ValueError(usage)
        return value.strip()

    @field_validator("mqtt_topic")
    @classmethod
    def _check_mqtt_topic(cls, value: str) -> str:
        if not value or any(char in value for char in "+#\0"):
            raise ValueError("must be a topic name, without the wildcards + and #")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value: Any) -> Any:
        return _json_list(value, '["http://localhost:3000"]')

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _parse_hosts(cls, value: Any) -> Any:
        return _json_list(value, '["configs.example.org"]')

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        # Compared with the Host header's name: lowercase, no trailing dot, no port.
        names = [name.strip().lower().removesuffix(".") for name in value]
        if any(not name or any(char in name for char in ":/[]@ ") for name in names):
            raise ValueError('must be host names without scheme or port, e.g. ["a.example.org"]')
        return names

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("oidc_issuer")
    @classmethod
    def _check_issuer(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value.strip():
            return None  # OIDC_ISSUER= (empty) leaves access control off
        url = urlsplit(value.strip())
        if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
            raise ValueError("must be the issuer URL, e.g. https://keycloak.example/realms/iot")
        plain = url.scheme == "http" and not is_loopback(url.hostname)
        if plain and not info.data.get("oidc_allow_http_issuer"):
            raise ValueError(
                "must be https:// (http:// only on a loopback address), as keys fetched over "
                "http can be replaced on the way; OIDC_ALLOW_HTTP_ISSUER=true allows it"
            )
        return value.strip()  # kept exactly: it must equal the tokens' `iss`

    @field_validator("oidc_audience")
    @classmethod
    def _check_audience(cls, value: str | None, info: ValidationInfo) -> str | None:
        value = value.strip() if value else None
        if info.data.get("oidc_issuer") and not value:
            raise ValueError("is required with OIDC_ISSUER (the `aud` our access tokens carry)")
        return value

    @field_validator("oidc_roles_claim", "oidc_device_claim", "oidc_read_role", "oidc_write_role")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value or any(char.isspace() for char in value) or "" in value.split("."):
            raise ValueError("must be a name (a dotted path for claims), without spaces")
        return value

    @field_validator("oidc_jwks_max_age")
    @classmethod
    def _check_max_age(cls, value: float, info: ValidationInfo) -> float:
        # Else the refresh it schedules would wait for the rate limit, and keys withdrawn by
        # the issuer would be trusted past OIDC_JWKS_MAX_AGE.
        if value < info.data.get("oidc_jwks_min_refresh", MIN_JWKS_REFRESH):
            raise ValueError("must be at least OIDC_JWKS_MIN_REFRESH")
        return value

    @field_validator("oidc_algorithms", mode="before")
    @classmethod
    def _parse_algorithms(cls, value: Any) -> Any:
        names = value.replace(",", " ").split() if isinstance(value, str) else value
        if not names or any(name not in ASYMMETRIC_ALGORITHMS for name in names):
            raise ValueError(f"must be some of {', '.join(ASYMMETRIC_ALGORITHMS)}")
        return names


def is_loopback(host: str) -> bool:
    """`localhost`, or an address of the loopback network (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_database_url(url: str) -> None:
    """ValueError unless `url` is a postgresql:// URL the driver can use; the message never
    repeats the URL (it may hold a password)."""
    usage = "must be postgresql://user:password@host:port/database"
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"{usage} (unknown scheme)")
    try:
        parts.port  # noqa: B018 (raises ValueError for a bad port)
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError(f"{usage} (bad port or parameters)") from None
    unknown = sorted({name for name, _ in query} - DATABASE_URL_PARAMETERS)
    if unknown:
        raise ValueError(f"{usage} (unsupported parameter {unknown[0]!r})")
    if "/" in parts.path[1:] or parts.fragment:
        raise ValueError(f"{usage} (a path of more than the database name)")


def _json_list(value: Any, example: str) -> Any:
    """An environment value as a JSON list (empty: none)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value) if value.strip() else []
    except ValueError:
        raise ValueError(f"must be a JSON list, e.g. {example}") from None


def load_settings() -> Settings:
    """Read the settings, turning a validation failure into one clear line."""
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(describe(error)) from None


def describe(error: ValidationError) -> str:
    """One line naming each bad setting by its environment variable."""
    problems = []
    for item in error.errors():
        name = "_".join(str(part) for part in item["loc"][:1]).upper()
        # A rule about several settings (exactly one store) names them in its message.
        problems.append(f"{name}: {item['msg']}" if name else item["msg"].split(", ", 1)[-1])
    return "invalid settings: " + "; ".join(problems)
