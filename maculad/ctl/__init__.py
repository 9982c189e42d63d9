"""`maculactl`: the command-line face of the control socket.

Modules: `discovery` finds the daemon's socket, `client` speaks HTTP over it and
types each answer with `maculad.control.protocol`, `render` turns answers into
text, and the commands are grouped by what they touch — `daemon_commands` (asks
or tells the running daemon), `setup_commands` (this machine: /etc/hosts, the
resolver, Docker's daemon.json, trust stores), `doctor_command` (checks both);
`main` holds the parser, the exit codes and the entry point. Everything here
starts without the daemon's dependencies (uvloop, h11, structlog, dnslib,
cryptography); a command that needs one imports it itself.
"""
