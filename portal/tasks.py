"""Jobs of the portal itself."""

from procrastinate.contrib.django import app


@app.task(name="portal.noop", queue="benchmark")
def noop() -> None:
    """Does nothing: `make bench` measures the job queue's own rate with it, as the reference
    for the delivery rate."""
