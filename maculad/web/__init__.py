"""The read-only status page at http://<domain>: one self-contained HTML page, its JSON and its live feed."""
