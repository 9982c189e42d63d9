"""The local certificate authority: a name-constrained root and per-name leaves."""
