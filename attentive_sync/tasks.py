"""Background jobs of the Attentive side (procrastinate). Thin: they call services by id."""

from __future__ import annotations

from procrastinate.contrib.django import app


@app.task(name="attentive_sync.deliver_event", queue="deliveries")
def deliver_event(delivery_id: int) -> None:
    """One try at one delivery; the service schedules any retry itself."""
    from attentive_sync.delivery import deliver

    deliver(delivery_id)


@app.periodic(cron="* * * * *", periodic_id="attentive-delivery-sweep")
@app.task(name="attentive_sync.sweep_deliveries", queue="deliveries")
def sweep_deliveries(timestamp: int) -> None:
    """Every minute: expire deliveries past the maximum age, requeue those that lost their job."""
    from attentive_sync.delivery import sweep

    sweep()
