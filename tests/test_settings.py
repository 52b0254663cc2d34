import subprocess
import sys
from pathlib import Path

import pytest

from quart_iot.settings import Settings, SettingsError, load_settings


def test_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ESP32_CONFIGS_DIR", str(tmp_path))
    monkeypatch.setenv("CORS_ORIGINS", '["http://a.example"]')
    monkeypatch.setenv("MAX_CONTENT_LENGTH", "2048")
    settings = load_settings()
    assert settings.esp32_configs_dir == tmp_path
    assert settings.cors_origins == ["http://a.example"]
    assert settings.max_content_length == 2048
    assert settings.port == 3201
    assert settings.host == "127.0.0.1"


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ESP32_CONFIGS_DIR", raising=False)
    (tmp_path / ".env").write_text(f"ESP32_CONFIGS_DIR={tmp_path}\nPORT=4000\n")
    settings = load_settings()
    assert settings.port == 4000


# A malformed value for every setting (a list where several mistakes are likely).
MALFORMED = {
    "ESP32_CONFIGS_DIR": ["", "   "],
    "DATABASE_URL": [
        "mysql://u:hunter2@db/configs",
        "postgresql://u:hunter2@db:99999/configs",
        "postgresql://u:hunter2@db/configs?sslmod=require",
        "postgresql://u:hunter2@db/configs/extra",
        "postgresql://u:hunter2@db/configs#part",
        "postgresql://u:hunter2@db/configs?sslmode",
    ],
    "DB_TIMEOUT": ["0", "-1", "soon", "301"],
    "DB_POOL_SIZE": ["0", "many", "1001"],
    "DB_CONNECT_TIMEOUT": ["0", "forever"],
    "DB_STATEMENT_TIMEOUT": ["0", "-5", "long"],
    "CORS_ORIGINS": ["http://a", '{"a": 1}', '["a", 1]'],
    "DEBUG": ["maybe"],
    "SECRET_KEY": [""],
    "MAX_CONTENT_LENGTH": ["-1", "1MB", "0"],
    "HOST": ["", "http://0.0.0.0", "0.0.0.0:3201", "two words"],
    "PORT": ["http", "70000", ""],
    "LOG_LEVEL": ["verbose", "", "20"],
    "SHUTDOWN_TIMEOUT": ["-1", "soon"],
    "ALLOWED_HOSTS": [
        "configs.example.org",
        '["https://configs.example.org"]',
        '["configs.example.org:443"]',
        '[""]',
    ],
    "BODY_TIMEOUT": ["0", "-5", "ten"],
    "SEND_TIMEOUT": ["0", "-1", "a minute", "3601"],
    "MAX_WAIT_SECONDS": ["-1", "1.5", "forever", "3601"],
    "MAX_WAITERS": ["0", "-1", "many", "1000001"],
    "EVENTS_HEARTBEAT_SECONDS": ["0", "-1", "often"],
    "MAX_WAITERS_PER_SUBJECT": ["0", "-1", "many", "1000001"],
    "MAX_WAITERS_PER_DEVICE": ["0", "-1", "many", "1000001"],
    "EVENTS_MAX_SECONDS": ["0", "-1", "forever", "86401"],
    "WORKERS": ["0", "two", "65"],
    "MQTT_URL": ["http://broker", "mqtt://broker:99999", "mqtt:///no-host"],
    "MQTT_TOPIC": ["a/+/b", "a/#"],
    "MQTT_QUEUE_SIZE": ["0", "many"],
    "LOCK_TIMEOUT": ["0", "-1", "61", "forever"],
    "HISTORY_MAX_VERSIONS": ["-1", "1.5", "many", "10001"],
    "HISTORY_MAX_DAYS": ["0", "-1", "forever", "36501"],
    "MAX_BULK_DEVICES": ["0", "-1", "many", "100001"],
    "OIDC_ALLOW_HTTP_ISSUER": ["maybe"],
    "OIDC_ISSUER": ["keycloak.local", "http://keycloak.example/realms/iot"],
    "OIDC_AUDIENCE": [""],  # with OIDC_ISSUER set (CONTEXT)
    "OIDC_ROLES_CLAIM": ["realm_access..roles"],
    "OIDC_READ_ROLE": ["a b"],
    "OIDC_WRITE_ROLE": [""],
    "OIDC_DEVICE_CLAIM": [" "],
    "OIDC_ALGORITHMS": ["RS256,HS256", "none"],
    "OIDC_ALLOW_PLAIN_JWT": ["maybe"],
    "OIDC_LEEWAY": ["-1"],
    "OIDC_HTTP_TIMEOUT": ["0"],
    "OIDC_JWKS_MIN_REFRESH": ["soon", "0", "4.9"],
    "OIDC_JWKS_MAX_AGE": ["0", "29"],  # below OIDC_JWKS_MIN_REFRESH (30)
}
# Settings that are malformed only beside another one.
CONTEXT = {"OIDC_AUDIENCE": {"OIDC_ISSUER": "https://kc.local/realms/iot"}}
FREE_TEXT = {"MQTT_USERNAME", "MQTT_PASSWORD"}  # any string is a user name or a password
CASES = [(name, value) for name, values in MALFORMED.items() for value in values]


def test_every_setting_has_a_malformed_case() -> None:
    assert set(MALFORMED) | FREE_TEXT == {name.upper() for name in Settings.model_fields}


@pytest.mark.parametrize(("name", "value"), CASES)
def test_a_malformed_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ESP32_CONFIGS_DIR", str(tmp_path))
    if name == "DATABASE_URL":  # the one store: no directory beside it
        monkeypatch.delenv("ESP32_CONFIGS_DIR")
    monkeypatch.setenv(name, value)
    for other, other_value in CONTEXT.get(name, {}).items():
        monkeypatch.setenv(other, other_value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith(f"invalid settings: {name}: "), message
    assert message.count(": ") == 2  # this setting alone
    assert "\n" not in message
    assert "hunter2" not in message  # a URL's password is never shown


def test_a_missing_configs_dir_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match="ESP32_CONFIGS_DIR"):
        load_settings()


@pytest.mark.parametrize(
    ("env", "state"),
    [
        ({}, "neither is set"),
        ({"ESP32_CONFIGS_DIR": "/srv/configs", "DATABASE_URL": "postgresql://u:pw@db/c"}, "both"),
        ({"DATABASE_URL": ""}, "neither is set"),  # empty: unset
    ],
)
def test_exactly_one_store_is_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], state: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == (
        "invalid settings: set exactly one of ESP32_CONFIGS_DIR (a directory) and DATABASE_URL "
        f"(PostgreSQL); {state}{' are set' if state == 'both' else ''}"
    )


def test_database_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    url = "postgresql://iot:s3cret@db.example:5433/configs?sslmode=verify-full&application_name=a"
    monkeypatch.setenv("DATABASE_URL", f" {url} ")
    monkeypatch.setenv("DB_TIMEOUT", "2.5")
    monkeypatch.setenv("DB_POOL_SIZE", "4")
    settings = load_settings()
    assert settings.database_url == url
    assert settings.esp32_configs_dir is None
    assert (settings.db_timeout, settings.db_pool_size) == (2.5, 4)
    assert (settings.db_connect_timeout, settings.db_statement_timeout) == (5.0, 30.0)
    assert "s3cret" not in repr(settings)


def test_main_refuses_a_malformed_database_url_without_its_password(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://u:hunter2@db:port/configs"}
    result = subprocess.run(
        [sys.executable, "-m", "quart_iot"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "quart_iot: invalid settings: DATABASE_URL: Value error, must be "
        "postgresql://user:password@host:port/database (bad port or parameters)"
    ]


@pytest.mark.parametrize("level", ["debug", "Warning", " ERROR "])
def test_log_level_is_case_insensitive(tmp_path: Path, level: str) -> None:
    settings = Settings(esp32_configs_dir=tmp_path, log_level=level, _env_file=None)
    assert settings.log_level == level.strip().upper()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "not-a-port"),
        ("LOG_LEVEL", "verbose"),
        ("ALLOWED_HOSTS", "configs.example.org"),
        ("BODY_TIMEOUT", "0"),
        ("HOST", "http://0.0.0.0"),
    ],
)
def test_main_refuses_to_start_with_one_clear_line(tmp_path: Path, name: str, value: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "ESP32_CONFIGS_DIR": str(tmp_path), name: value}
    result = subprocess.run(
        [sys.executable, "-m", "quart_iot"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{name}: " in lines[0]
    assert "Traceback" not in result.stderr


def test_secret_key_is_not_shown(tmp_path: Path) -> None:
    settings = Settings(esp32_configs_dir=tmp_path, secret_key="hunter2", _env_file=None)
    assert "hunter2" not in repr(settings)


def test_oidc_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ESP32_CONFIGS_DIR", str(tmp_path))
    monkeypatch.setenv("OIDC_ISSUER", "https://auth.example/application/o/iot/")
    monkeypatch.setenv("OIDC_AUDIENCE", "quart-iot")
    monkeypatch.setenv("OIDC_ALGORITHMS", "RS256, ES256")
    settings = load_settings()
    assert settings.oidc_issuer == "https://auth.example/application/o/iot/"
    assert settings.oidc_algorithms == ["RS256", "ES256"]
    assert settings.oidc_roles_claim == "realm_access.roles"
