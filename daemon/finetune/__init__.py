"""Local fine-tuning on the appliance: samples, jobs, the runner, promotion, HTTP routes.

- ``samples``: ``SampleStore`` (SQLite + files), label checks against the active model;
- ``jobs``: ``JobStore``, one job queued or running at a time;
- ``service``: ``FinetuneService``, the runner (worker process, progress, events, resume);
- ``promote``: versioning, signing with the device key, installing into the model store;
- ``api``: the ``/v1/samples`` and ``/v1/finetune`` routes.

Nothing here imports torch at import time: the worker process does the ML.
"""
