"""The only I/O with other systems: Docker (`docker/`), Kubernetes (`kube/`), the kind CLI (`kind`),
the PowerDNS HTTP API (`powerdns`).

Each adapter sits behind the `Protocol` the logic above it uses (`DockerAPI`,
`KindCLI`, `ZoneAPI`, …), so supervisors and providers are tested against fakes that speak
the same shapes, and the real clients are tested against the real engine.
"""
