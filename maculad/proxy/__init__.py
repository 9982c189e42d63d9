"""The per-service loopback relay: TCP and UDP listeners on each route's own IP.

`Relay` (relay.py) is the component the daemon composes; tcp.py and udp.py
are the data paths, spec.py the pure listener planning, errorpage.py the
dead-backend page and platform.py the macOS lo0 alias layer. Nothing is
imported here, so the pure planning (spec.py) loads without the data paths.
"""
