"""The Grafana dashboard uses only metrics maculad exports, checked against a live /metrics.

By default the test starts the real daemon (`maculad run` on free ports) and reads its /metrics
(families without samples still appear in `# TYPE` lines). Set MACULAD_METRICS_URL (e.g.
http://127.0.0.1:9469/metrics) to check against a daemon that is already running instead.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from maculad.config import load_config
from maculad.observability.metrics import Metrics
from tests.support.daemon import Maculad, base_config

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "config" / "grafana" / "maculad-dashboard.json"
NAME = re.compile(r"\bmaculad_[a-zA-Z0-9_]+")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created", ""),
    "info": ("_info",),
    "gauge": ("",),
    "unknown": ("",),
}


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("MACULAD_METRICS_URL")
    if url:
        with urllib.request.urlopen(url, timeout=10) as resp:
            yield resp.read().decode()
        return
    tmp = tmp_path_factory.mktemp("dashboard")
    text, ports = base_config(tmp, extra='[[route]]\nname = "grafana"\nhttp = "127.0.0.2:3000"\n')
    (tmp / "maculad.toml").write_text(text)
    daemon = Maculad(tmp / "maculad.toml", log=tmp / "maculad.log").start()
    try:
        daemon.wait_ready(ports["metrics"])
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10) as resp:
            yield resp.read().decode()
    finally:
        daemon.stop()


def sample_names(text: str) -> set[str]:
    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        names |= {fam.name + s for s in SUFFIXES.get(fam.type, ("",))}
        names |= {s.name for s in fam.samples}
    return names


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def test_every_metric_in_the_dashboard_is_exported(exposition: str) -> None:
    exported = sample_names(exposition)
    used = {m for e in exprs() for m in NAME.findall(e)}
    assert used, "the dashboard queries no maculad metric"
    missing = sorted(used - exported)
    assert not missing, f"not in /metrics: {missing}"


def _labels() -> dict[str, set[str]]:
    """Declared label names per metric family, from the Metrics object itself."""
    m = Metrics()
    out: dict[str, set[str]] = {"maculad_dns_queries": {"qtype", "rcode"}}
    for attr in vars(m).values():
        name = getattr(attr, "_name", None)
        if isinstance(name, str):
            out[name.removesuffix("_total")] = set(getattr(attr, "_labelnames", ()))
    return out


def _family(sample: str) -> str:
    for suf in ("_bucket", "_count", "_sum", "_total", "_info"):
        if sample.endswith(suf):
            return sample[: -len(suf)]
    return sample


def test_grouping_labels_exist_on_the_metrics() -> None:
    labels = _labels()
    for e in exprs():
        fams = {_family(n) for n in NAME.findall(e)}
        have = set().union(*(labels.get(f, set()) for f in fams)) | {"le"}
        for group in re.findall(r"\bby \(([^)]*)\)", e):
            for label in (x.strip() for x in group.split(",")):
                assert label in have, f"{label!r} is not a label of {sorted(fams)} in: {e}"
        for legend_label in re.findall(r"\{\{(\w+)\}\}", json.dumps(e)):
            assert legend_label in have


def test_dashboard_covers_the_issue() -> None:
    text = " ".join(exprs())
    for needed in ("maculad_dns_queries_total", "maculad_dns_query_duration_seconds_bucket",
                   "maculad_proxy_connections_total", "maculad_proxy_upstream_errors_total",
                   "maculad_service_up", "maculad_service_restarts_total", "maculad_service_backoff_seconds",
                   "maculad_cluster_ready", "maculad_kubernetes_seconds_since_last_event",
                   "maculad_kubernetes_connected"):
        assert needed in text, needed
    assert "by (route" in text  # relay connections and errors by route


def test_dashboard_structure() -> None:
    d = dashboard()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    assert d["uid"] == "maculad"
    assert [v["name"] for v in d["templating"]["list"]] == ["datasource"]
    for p in d["panels"]:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"]
        for t in p.get("targets", []):
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
    # legend fields only use labels present in the expression's result
    for t in (t for p in d["panels"] for t in p.get("targets", [])):
        for lab in re.findall(r"\{\{(\w+)\}\}", t["legendFormat"]):
            grouped = re.findall(r"\bby \(([^)]*)\)", t["expr"])
            if grouped:
                assert any(lab in g for g in grouped), (lab, t["expr"])


def test_prometheus_scrape_config_matches_the_default_config() -> None:
    scrape = yaml.safe_load((ROOT / "config" / "prometheus" / "maculad-scrape.yml").read_text())
    (job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "maculad"]
    cfg = load_config(ROOT / "config" / "maculad.toml")
    assert cfg.metrics.listen is not None
    assert job["static_configs"][0]["targets"] == [str(cfg.metrics.listen)]
    assert job["metrics_path"] == "/metrics"


def test_grafana_provisioning_parses() -> None:
    for f in (ROOT / "config" / "grafana" / "provisioning").rglob("*.yml"):
        data = yaml.safe_load(f.read_text())
        assert data["apiVersion"] == 1
