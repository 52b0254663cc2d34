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


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "ESP32_CONFIGS_DIR"),
        ({"ESP32_CONFIGS_DIR": ""}, "ESP32_CONFIGS_DIR"),
        ({"ESP32_CONFIGS_DIR": "/x", "PORT": "http"}, "PORT"),
        ({"ESP32_CONFIGS_DIR": "/x", "CORS_ORIGINS": "http://a"}, "CORS_ORIGINS"),
        ({"ESP32_CONFIGS_DIR": "/x", "MAX_CONTENT_LENGTH": "-1"}, "MAX_CONTENT_LENGTH"),
        ({"ESP32_CONFIGS_DIR": "/x", "DEBUG": "maybe"}, "DEBUG"),
        ({"ESP32_CONFIGS_DIR": "/x", "OIDC_ISSUER": "keycloak.local"}, "OIDC_ISSUER"),
        (
            {"ESP32_CONFIGS_DIR": "/x", "OIDC_ISSUER": "https://kc.local/realms/iot"},
            "OIDC_AUDIENCE",
        ),
        (
            {"ESP32_CONFIGS_DIR": "/x", "OIDC_ROLES_CLAIM": "realm_access..roles"},
            "OIDC_ROLES_CLAIM",
        ),
        ({"ESP32_CONFIGS_DIR": "/x", "OIDC_READ_ROLE": "a b"}, "OIDC_READ_ROLE"),
        ({"ESP32_CONFIGS_DIR": "/x", "OIDC_WRITE_ROLE": ""}, "OIDC_WRITE_ROLE"),
        ({"ESP32_CONFIGS_DIR": "/x", "OIDC_DEVICE_CLAIM": " "}, "OIDC_DEVICE_CLAIM"),
        ({"ESP32_CONFIGS_DIR": "/x", "OIDC_ALGORITHMS": "RS256,HS256"}, "OIDC_ALGORITHMS"),
        ({"ESP32_CONFIGS_DIR": "/x", "OIDC_ALGORITHMS": "none"}, "OIDC_ALGORITHMS"),
        ({"ESP32_CONFIGS_DIR": "/x", "OIDC_LEEWAY": "-1"}, "OIDC_LEEWAY"),
        ({"ESP32_CONFIGS_DIR": "/x", "OIDC_HTTP_TIMEOUT": "0"}, "OIDC_HTTP_TIMEOUT"),
        ({"ESP32_CONFIGS_DIR": "/x", "OIDC_JWKS_MIN_REFRESH": "soon"}, "OIDC_JWKS_MIN_REFRESH"),
        ({"ESP32_CONFIGS_DIR": "/x", "OIDC_JWKS_MAX_AGE": "0"}, "OIDC_JWKS_MAX_AGE"),
    ],
)
def test_bad_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], named: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("ESP32_CONFIGS_DIR", "PORT", "CORS_ORIGINS", "MAX_CONTENT_LENGTH", "DEBUG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert named in message
    assert "\n" not in message


def test_main_refuses_to_start_with_one_clear_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PORT": "not-a-port", "ESP32_CONFIGS_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "quart_iot"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "PORT" in lines[0]
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
