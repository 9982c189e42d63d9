"""Every metric maculad exports, defined in one place.

A `Metrics` instance owns its own `CollectorRegistry`, so several daemons can
run in one test process. Parts receive the instance by injection and touch only
the attributes defined here; nothing else creates a metric.

Hot paths (a DNS query, a relayed chunk) must stay cheap: the DNS server keeps
plain integer counters in `DNSCounters` and they are turned into samples only
when `/metrics` is scraped.
"""

from __future__ import annotations

import platform
from collections import defaultdict
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from maculad import __version__

PREFIX = "maculad"

_LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
_CONNECT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class DNSCounters(Collector):
    """Per-(qtype, rcode) query counts as plain ints, exported at scrape time."""

    def __init__(self) -> None:
        self.queries: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.malformed = 0
        self.fastpath_hits = 0
        self.truncated = 0
        # A hot path may count in its own structures (the DNS fast path counts hits per cached
        # answer) and fold them in here; every flusher runs before the counts are read.
        self.flushers: list[Callable[[], None]] = []

    def flush(self) -> None:
        for flush in self.flushers:
            flush()

    def collect(self) -> Iterable[Metric]:
        self.flush()
        q = CounterMetricFamily(
            f"{PREFIX}_dns_queries", "DNS queries answered, by question type and response code",
            labels=["qtype", "rcode"],
        )
        for (qtype, rcode), n in sorted(self.queries.items()):
            q.add_metric([qtype, rcode], n)
        yield q
        yield CounterMetricFamily(
            f"{PREFIX}_dns_malformed_packets", "DNS packets that could not be parsed", value=self.malformed
        )
        yield CounterMetricFamily(
            f"{PREFIX}_dns_fastpath_hits", "DNS queries answered from pre-encoded answers",
            value=self.fastpath_hits,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_dns_truncated_responses", "UDP answers sent with TC set", value=self.truncated
        )


class _BeforeScrape(Collector):
    """Registered first, yields nothing: runs the hooks that fold hot-path counts into metrics, so
    counts are exported when they are read (a scrape, a status) instead of by a timer."""

    def __init__(self) -> None:
        self.hooks: list[Callable[[], None]] = []

    def collect(self) -> Iterable[Metric]:
        for hook in list(self.hooks):
            hook()
        return ()


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = PREFIX
        self.before_scrape = _BeforeScrape()
        r.register(self.before_scrape)

        self.build_info = Info(f"{p}_build", "maculad version and runtime", registry=r)
        self.build_info.info({"version": __version__, "python": platform.python_version()})
        self.up = Gauge(f"{p}_up", "1 once DNS and the relay serve", registry=r)
        self.task_restarts = Counter(
            f"{p}_task_restarts_total", "Long-lived tasks restarted after dying", ["task"], registry=r
        )
        self.reloads = Counter(f"{p}_reloads_total", "Configuration reloads", ["result"], registry=r)
        self.state_save_failures = Counter(
            f"{p}_state_save_failures", "Saves of the state (allocations.json) that failed and are retried",
            registry=r)
        self.watchdog_withheld = Counter(
            f"{p}_watchdog_withheld_total", "systemd watchdog rounds whose WATCHDOG=1 was withheld (unhealthy)",
            registry=r,
        )
        self.open_files_limit = Gauge(
            f"{p}_open_files_limit", "RLIMIT_NOFILE of the daemon after start (soft raised to hard)", ["limit"],
            registry=r,
        )

        # route table
        self.routes = Gauge(f"{p}_routes", "Routes in the table, by source", ["source"], registry=r)
        self.route_conflicts = Gauge(
            f"{p}_route_conflicts", "Route specs that lost their name, pin or pool IP, by kind (name, ip, pool)",
            ["kind"], registry=r
        )
        self.route_ip_changes = Counter(
            f"{p}_route_ip_changes_total", "Names whose IP changed from the one they last had (each one logged)",
            registry=r
        )
        self.route_table_updates = Counter(
            f"{p}_route_table_updates_total", "Route tables built and published", registry=r
        )

        # DNS
        self.dns = DNSCounters()
        r.register(self.dns)
        self.dns_latency = Histogram(
            f"{p}_dns_query_duration_seconds", "Time to answer a DNS query (sampled on the fast path)",
            ["transport"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.dns_forwarded = Counter(
            f"{p}_dns_forwarded_total", "Queries outside the domain sent to forwarders", ["result"], registry=r
        )
        self.dns_tcp_closed = Counter(
            f"{p}_dns_tcp_closed_total", "DNS TCP clients the server closed, by reason (idle: dns.tcp_idle_timeout "
            "without a query or a read; evicted: the oldest idle one, to admit a new client at dns.max_tcp_clients)",
            ["horizon", "reason"], registry=r,
        )
        self.dns_listeners = Gauge(
            f"{p}_dns_listeners", "DNS sockets serving", ["horizon", "transport"], registry=r
        )

        # relay
        self.proxy_connections = Counter(
            f"{p}_proxy_connections_total", "Connections (TCP) or sessions (UDP) accepted",
            ["horizon", "route", "port", "proto"], registry=r,
        )
        self.proxy_active = Gauge(
            f"{p}_proxy_active_connections", "Relayed TCP connections open now (TCP listeners only)",
            ["horizon", "route", "port", "proto"], registry=r,
        )
        self.proxy_bytes = Counter(
            f"{p}_proxy_bytes_total", "Bytes relayed; in = client to backend, out = backend to client",
            ["horizon", "route", "port", "proto", "direction"], registry=r,
        )
        self.proxy_upstream_errors = Counter(
            f"{p}_proxy_upstream_errors_total", "Backend connections that failed, by reason",
            ["horizon", "route", "port", "proto", "reason"], registry=r,
        )
        self.proxy_connect_latency = Histogram(
            f"{p}_proxy_connect_duration_seconds", "Time to connect to the backend",
            ["horizon", "route"], buckets=_CONNECT_BUCKETS, registry=r,
        )
        self.proxy_udp_sessions = Gauge(
            f"{p}_proxy_udp_sessions", "UDP relay sessions open now (UDP listeners only)",
            ["horizon", "route", "port", "proto"], registry=r,
        )
        self.proxy_rejected = Counter(
            f"{p}_proxy_rejected_connections_total",
            "TCP connections closed at accept, by reason (limit: the listener had proxy.max_connections open)",
            ["horizon", "route", "port", "proto", "reason"], registry=r,
        )
        self.proxy_timeouts = Counter(
            f"{p}_proxy_timeouts_total",
            "TCP connections the relay closed, by reason (idle: proxy.idle_timeout without a byte either way; "
            "first_byte: the client sent nothing within proxy.first_byte_timeout)",
            ["horizon", "route", "port", "proto", "reason"], registry=r,
        )
        self.proxy_piped = Gauge(
            f"{p}_proxy_piped_connections",
            "Relayed TCP connections open now whose bytes the relay's pump moves (past their first chunks)",
            ["horizon"], registry=r,
        )
        self.proxy_listeners = Gauge(
            f"{p}_proxy_listeners", "Relay listeners, by state (serving, failed)", ["horizon", "state"], registry=r
        )
        self.proxy_unrouted = Counter(
            f"{p}_proxy_unrouted_connections_total",
            "Connections on a name-routed address (G:80/443) that named no known route, by reason",
            ["horizon", "port", "proto", "reason"], registry=r,
        )
        self.proxy_listener_errors = Counter(
            f"{p}_proxy_listener_errors_total", "Failed attempts to bind a relay listener",
            ["address", "reason"], registry=r,
        )

        # horizons
        self.horizon_up = Gauge(
            f"{p}_horizon_up", "1 while the horizon serves (DNS and relay on its address)", ["horizon"], registry=r
        )
        self.horizon_info = Gauge(
            f"{p}_horizon_info", "1 for the horizon's address and state, with the reason when it is off",
            ["horizon", "address", "state", "reason"], registry=r,
        )
        self.horizon_port_conflicts = Gauge(
            f"{p}_horizon_port_conflicts", "Extra ports the horizon cannot serve (claimed by several routes)",
            ["horizon"], registry=r,
        )
        self.coredns_block = Gauge(
            f"{p}_coredns_block_applied", "1 while the maculad block is in kube-system/coredns as wanted", registry=r
        )
        self.coredns_writes = Counter(
            f"{p}_coredns_writes_total", "Writes of the CoreDNS ConfigMap, by action (add, update, remove, error)",
            ["action"], registry=r,
        )

        # TLS: the local CA, leaves, termination in the relay
        self.tls_handshakes = Counter(
            f"{p}_tls_handshakes_total", "TLS handshakes the relay completed (terminated routes)",
            ["route"], registry=r,
        )
        self.tls_handshake_failures = Counter(
            f"{p}_tls_handshake_failures_total",
            "TLS handshakes that failed, by reason (sni_outside_domain, client_rejected_certificate, timeout, …)",
            ["route", "reason"], registry=r,
        )
        self.tls_leaves_issued = Counter(
            f"{p}_tls_leaves_issued_total", "Leaf certificates issued, by reason (new, renew, corrupt)",
            ["reason"], registry=r,
        )
        self.tls_leaves_cached = Gauge(
            f"{p}_tls_leaves_cached", "Leaf certificates held in memory", registry=r
        )
        self.tls_ca_expiry = Gauge(
            f"{p}_tls_ca_expiry_timestamp_seconds", "When the local root CA expires (0: no CA loaded)", registry=r
        )
        self.tls_signer_runs = Counter(
            f"{p}_tls_signer_runs_total",
            "Runs of the child that makes the CA and leaves (python -m maculad.pki.sign), by result "
            "(ok, failed, timeout)", ["result"], registry=r,
        )
        self.tls_redirects = Counter(
            f"{p}_tls_redirects_total", "Plain HTTP requests answered with a 308 to https", ["route"], registry=r
        )

        # services (Docker tier) and cluster
        self.service_up = Gauge(
            f"{p}_service_up", "1 when the service's container runs (and is healthy, if it has a check)",
            ["service", "tier"], registry=r,
        )
        self.service_restarts = Counter(
            f"{p}_service_restarts_total", "Restarts maculad made, by reason", ["service", "reason"], registry=r
        )
        self.service_state = Gauge(
            f"{p}_service_state", "1 for the service's current supervision state", ["service", "state"], registry=r
        )
        self.service_backoff = Gauge(
            f"{p}_service_backoff_seconds", "Current restart delay of the service", ["service"], registry=r
        )
        self.docker_connected = Gauge(f"{p}_docker_connected", "1 while the Docker engine answers", registry=r)
        self.docker_events = Counter(
            f"{p}_docker_events_total", "Docker events received", ["type"], registry=r
        )
        self.docker_reconnects = Counter(
            f"{p}_docker_reconnects_total", "Times the Docker event stream was re-established", registry=r
        )
        self.cluster_ready = Gauge(f"{p}_cluster_ready", "1 when the kind cluster is ready", ["cluster"], registry=r)
        self.cluster_state = Gauge(
            f"{p}_cluster_state", "1 for the cluster's current state", ["cluster", "state"], registry=r
        )
        self.cluster_recreations = Counter(
            f"{p}_cluster_recreations_total", "Times maculad deleted and created the cluster", ["cluster"], registry=r
        )
        self.cluster_actions = Counter(
            f"{p}_cluster_actions_total", "Repair actions taken on the cluster", ["cluster", "action"], registry=r
        )

        # Kubernetes Ingress watch
        self.k8s_watch_events = Counter(
            f"{p}_kubernetes_watch_events_total", "Ingress watch events, by type", ["type"], registry=r
        )
        self.k8s_relists = Counter(f"{p}_kubernetes_relists_total", "Full Ingress relists", registry=r)
        self.k8s_reconnects = Counter(
            f"{p}_kubernetes_reconnects_total", "Ingress watch reconnects after an error", registry=r
        )
        self.k8s_since_last_event = Gauge(
            f"{p}_kubernetes_seconds_since_last_event", "Seconds since the last watch event or bookmark",
            registry=r,
        )
        self.k8s_connected = Gauge(f"{p}_kubernetes_connected", "1 while the Ingress watch streams", registry=r)

        # PowerDNS
        self.powerdns_connected = Gauge(
            f"{p}_powerdns_connected", "1 while the PowerDNS API answers and accepts the key", registry=r
        )
        self.powerdns_syncs = Counter(
            f"{p}_powerdns_syncs_total", "Zone reconcile rounds (list, diff, patch), by result", ["result"],
            registry=r,
        )
        self.powerdns_patches = Counter(
            f"{p}_powerdns_patches_total", "PATCH requests sent to the PowerDNS zone", registry=r
        )
        self.powerdns_rrset_changes = Counter(
            f"{p}_powerdns_rrset_changes_total", "RRsets replaced or deleted in the PowerDNS zone", registry=r
        )
        self.powerdns_sync_duration = Histogram(
            f"{p}_powerdns_sync_duration_seconds", "Time for one successful reconcile round",
            buckets=_CONNECT_BUCKETS, registry=r,
        )
        self.powerdns_records_owned = Gauge(
            f"{p}_powerdns_records_owned", "Names maculad owns (A + owner TXT) in the PowerDNS zone", registry=r
        )
        self.powerdns_conflicts = Gauge(
            f"{p}_powerdns_conflicts", "Names maculad wants in PowerDNS but someone else owns", registry=r
        )
        self.powerdns_last_sync = Gauge(
            f"{p}_powerdns_last_sync_timestamp_seconds", "Unix time of the last successful reconcile", registry=r
        )
        self.powerdns_backoff = Gauge(
            f"{p}_powerdns_backoff_seconds", "Current retry delay after a failed reconcile (0: none)", registry=r
        )
        self.powerdns_lookups = Counter(
            f"{p}_powerdns_lookups_total", "In-zone names maculad does not own, asked of PowerDNS's DNS port",
            ["result"], registry=r,
        )

        # control
        self.control_requests = Counter(
            f"{p}_control_requests_total", "Control socket requests", ["endpoint", "status"], registry=r
        )

        # web (the status page)
        self.web_requests = Counter(
            f"{p}_web_requests_total", "Status page HTTP requests", ["endpoint", "status"], registry=r
        )
        self.web_connections = Gauge(f"{p}_web_connections", "Open HTTP connections to the status page",
                                     registry=r)
        self.web_connections_refused = Counter(
            f"{p}_web_connections_refused_total", "Status page connections refused at web.max_connections",
            registry=r,
        )
        self.web_sse_clients = Gauge(f"{p}_web_sse_clients", "Open live (SSE) streams of the status page",
                                     registry=r)
        self.web_sse_dropped = Counter(
            f"{p}_web_sse_dropped_total", "Live streams refused (web.max_clients) or cut (a client too slow)",
            ["reason"], registry=r,
        )
        self.web_backend_checks = Counter(
            f"{p}_web_backend_checks_total", "Backend connect checks made for the status page", ["result"],
            registry=r,
        )
