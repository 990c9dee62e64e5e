"""Signed model delivery on the appliance: TUF client, resumable download, content-addressed
store, the active-model manager and the reconciler that ties them together.

- ``fetch``: ``RangeFetcher`` (python-tuf ``FetcherInterface`` plus ranged reads), HTTPS impl;
- ``download``: one target, bounded by its signed length and a total deadline, resumable;
- ``tufclient``: the ngclient ``Updater`` behind a file lock, errors mapped to refusal codes;
- ``store``: ``store/<sha256>/``, the ``current``/``previous`` symlinks, the activation journal;
- ``gate``: the pure health gate; ``rules``: the pure may-we-install decision;
- ``manager``: ``ModelManager`` (``current()``, ``lease()``, ``on_activate``), for inference;
- ``service``: ``ModelService``, the reconciler run by the daemon.

Nothing here imports torch at import time; ``models`` is imported when a model is prepared.
"""
