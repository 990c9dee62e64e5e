"""The daemon's HTTP server: drone uplink API, metrics, liveness, status page."""
