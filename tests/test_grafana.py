"""deploy/grafana-dashboard.json queries only metrics a real node exposes on GET /metrics."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slimsched.localcluster import LocalCluster

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana-dashboard.json"
_METRIC = re.compile(r"\bslimsched_[a-z0-9_]+")
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("", "_total", "_created")}


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def exposed_names(text: str) -> set[str]:
    """Every series name the exposition can hold: its samples, and what each TYPE line declares
    (a labelled counter with no child yet has no sample, only its HELP and TYPE)."""
    names = {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            base = name.removesuffix("_total")
            names.update(base + s for s in _SUFFIXES.get(kind, ("",)))
    return names


def test_the_dashboard_queries_only_metrics_a_node_exposes(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in _panels(dashboard["panels"]) if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    assert exprs and all("$instance" in e for e in exprs), "every query follows the Node selector"
    assert len({p["id"] for p in _panels(dashboard["panels"])}) == len(list(_panels(dashboard["panels"])))
    queried = {m for e in exprs for m in _METRIC.findall(e)}
    queried |= set(_METRIC.findall(json.dumps(dashboard["templating"])))
    # The list: firing lateness, missed ticks, queue depth, dispatch errors, Raft role and
    # term, backup age.
    assert {
        "slimsched_fire_lateness_seconds_bucket",
        "slimsched_ticks_total",
        "slimsched_queue_depth",
        "slimsched_dispatch_errors_total",
        "slimsched_raft_is_leader",
        "slimsched_raft_term",
        "slimsched_backup_last_write_timestamp_seconds",
    } <= queried
    with LocalCluster.create(1, str(tmp_path), backups=True) as cluster:
        cluster.start()
        cluster.wait_ready(timeout=30)
        with urllib.request.urlopen(cluster.nodes[0].url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
    missing = queried - exposed_names(text)
    assert not missing, f"the dashboard queries metrics no node exposes: {sorted(missing)}"


def test_exposed_names_reads_samples_and_declared_types() -> None:
    text = "\n".join(
        [
            "# HELP slimsched_ticks_total Cron ticks",
            "# TYPE slimsched_ticks_total counter",
            "# TYPE slimsched_fire_lateness_seconds histogram",
            'slimsched_fire_lateness_seconds_bucket{le="0.005"} 0.0',
            "slimsched_queue_depth 3.0",
        ]
    )
    names = exposed_names(text)
    assert {"slimsched_ticks_total", "slimsched_fire_lateness_seconds_sum", "slimsched_queue_depth"} <= names
    assert "slimsched_queue_depth_total" not in names and "slimsched_nope" not in names
