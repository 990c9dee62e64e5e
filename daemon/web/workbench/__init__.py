"""The engineer's workbench on ``/workbench``: review detections, label tiles, fine-tune, promote
and roll back, from a browser on the site network.

The page itself is a Jinja2 template (autoescaped) with its own small script and stylesheet,
served under a strict Content-Security-Policy; no CDN. Everything it changes goes through the
REST API (``/v1/samples``, ``/v1/finetune``, ``/v1/models``) with the session standing in for
the bearer token (``daemon/web/session.py``): there is no second permission model. The few
routes here add only what the REST API has no use for: signing in, the review grid's tiles
(``review.py``) and small previews to cut them from.
"""

from daemon.web.workbench.handlers import Workbench, WorkbenchSources

__all__ = ["Workbench", "WorkbenchSources"]
