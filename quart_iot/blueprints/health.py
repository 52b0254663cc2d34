"""Probes: readiness (the configs directory is usable) and liveness (the process serves)."""

from quart import Blueprint
from quart_schema import tag_blueprint, validate_response

from quart_iot.models import Health, Liveness
from quart_iot.notifications import mqtt_state
from quart_iot.shutdown import shutting_down
from quart_iot.store import current_store

blueprint = Blueprint("health", __name__)
tag_blueprint(blueprint, ["health"])


@blueprint.get("/api/health")
@validate_response(Health, 200)
@validate_response(Health, 503)
async def health() -> tuple[Health, int]:
    """Readiness: 503 when the configs directory is missing, not a directory or unreadable."""
    storage, reason = await current_store().health()
    mqtt = mqtt_state()  # information only: a broker that is down never makes us unready
    if reason is not None:
        return Health(status="unhealthy", reason=reason, storage="unavailable", mqtt=mqtt), 503
    if shutting_down():  # so that load balancers send no more requests here
        return Health(status="unhealthy", reason="shutting down", storage=storage, mqtt=mqtt), 503
    return Health(status="healthy", storage=storage, mqtt=mqtt), 200


@blueprint.get("/api/health/live")
@validate_response(Liveness)
async def live() -> Liveness:
    """Liveness: answers while the process serves; touches no disk."""
    return Liveness()
