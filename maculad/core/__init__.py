"""The bottom layer: rules every other part calls, each with one owner.

`names` (qualify, the domain rule), `net` (`Backend`, host:port, the loopback
and pin rules), `backoff`, `restart` (the restart-policy vocabulary), `tasks`,
`events`, `fsutil`, `limits` (the open-file limit), `httpserver` (the HTTP/1.1 server of the control
socket, /metrics and the page). Nothing here imports anything else of maculad, and nothing here needs
more than the standard library and structlog (and h11, for `httpserver`).
"""
