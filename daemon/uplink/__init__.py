"""The drone uplink: authenticated image ingestion, dynamic batching, results, watch folder.

- ``service.UplinkService``: admission, durable queue, workers, events to the outbox, retention;
- ``batcher.TileBatcher``: tiles of concurrent images pooled into one backend call, off the loop;
- ``provider``: the ``ModelProvider`` contract (where the active model comes from);
- ``store.ResultStore``: SQLite (sqlite-utils, WAL) rows plus image files on disk;
- ``api.UplinkApi``: the HTTP routes; ``openapi``: their document;
- ``tokens.TokenStore``: hashed bearer tokens; ``watch.WatchFolder``: the drop folder.

Nothing here imports torch, onnxruntime or ``models`` at import time: ``spoke`` commands that
never serve images do not pay for them.
"""
