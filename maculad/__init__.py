"""maculad: every Macula service at a clean URL on its own loopback IP."""

__version__ = "0.1.0"
