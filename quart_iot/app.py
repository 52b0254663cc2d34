"""The application factory: it reads as the table of contents of the service."""

from importlib.metadata import version

from quart import Quart
from quart_cors import cors

from quart_iot.apidocs import ApiDocs
from quart_iot.audit import Audit
from quart_iot.blueprints import changes, configs, health, history, models
from quart_iot.correlation import HEADER, CorrelationIds
from quart_iot.errors import register_error_handlers
from quart_iot.hosts import AllowedHosts, HostCheckedQuart
from quart_iot.jsonrequest import StrictJSONRequest
from quart_iot.logs import configure_logging
from quart_iot.metrics import Metrics
from quart_iot.notifications import Notifications
from quart_iot.oidc import AccessControl
from quart_iot.settings import Settings, load_settings
from quart_iot.shutdown import GracefulStop
from quart_iot.store import ConfigStore
from quart_iot.waiting import Waiting


def create_app(settings: Settings | None = None) -> Quart:
    """Build the app from explicit settings (or the environment)."""
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    app = HostCheckedQuart(__name__)  # Quart, answering a Host werkzeug cannot route (hosts.py)
    app.config.update(
        DEBUG=settings.debug,
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_content_length,
        BODY_TIMEOUT=settings.body_timeout,  # Quart's own default, 60 s, lets slow bodies pile up
        SETTINGS=settings,
    )
    app.request_class = StrictJSONRequest
    ApiDocs(title="quart_iot", version=version("quart-iot")).init_app(app)
    CorrelationIds().init_app(app)
    ConfigStore.from_settings(settings).init_app(app)
    Metrics().init_app(app)
    AllowedHosts(settings.allowed_hosts).init_app(app)  # before any handler or body read
    Notifications(settings).init_app(app)
    AccessControl(settings).init_app(app)
    Audit(settings).init_app(app)  # from the store's write events
    GracefulStop(settings.shutdown_timeout).init_app(app)
    Waiting(settings).init_app(app)
    register_error_handlers(app)
    app.register_blueprint(changes.blueprint)
    app.register_blueprint(configs.blueprint)
    app.register_blueprint(history.blueprint)
    app.register_blueprint(models.blueprint)
    app.register_blueprint(health.blueprint)
    return cors(
        app,
        allow_origin=settings.cors_origins,
        allow_methods=["GET", "PUT", "PATCH", "DELETE", "POST"],
        allow_headers=[
            "Authorization",
            "Content-Type",
            "If-Match",
            "If-None-Match",
            "Prefer",
            "Last-Event-ID",
            HEADER,
        ],
        expose_headers=[
            "ETag",
            "WWW-Authenticate",
            "Preference-Applied",
            "Config-Unchanged",
            "Schema-Violations",
            HEADER,
        ],
        max_age=600,
    )
