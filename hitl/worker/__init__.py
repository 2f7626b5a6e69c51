"""The Celery side of hitl: journaled steps (:mod:`~hitl.worker.steps`), the wait task and the run's end
(:mod:`~hitl.worker.waits`), what plain tasks' signals do (:mod:`~hitl.worker.signals`) and the beat jobs
(:mod:`~hitl.worker.jobs`). Importing this package registers all of them on :data:`hitl.infra.celery_app.app`."""

from hitl.worker import jobs, signals, steps, waits

__all__ = ["jobs", "signals", "steps", "waits"]
