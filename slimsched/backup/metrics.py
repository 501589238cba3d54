"""The backup task's Prometheus metrics (backup/RUNBOOK.md, "Watching it", says what to alert on)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class BackupMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.passes = Counter(
            "slimsched_backup_passes",
            "Backup passes by outcome (written, unchanged, kept_non_empty, older, no_space, failed)",
            ["outcome"],
            registry=registry,
        )
        self.last_write = Gauge(
            "slimsched_backup_last_write_timestamp_seconds",
            "When this node last wrote its backup",
            registry=registry,
        )
        self.schedules = Gauge(
            "slimsched_backup_schedules", "Schedules in this node's backup file on disk", registry=registry
        )
        self.corrupt = Counter(
            "slimsched_backup_corrupt_files",
            "Backup files refused because they did not verify, by file",
            ["file"],
            registry=registry,
        )
        self.damaged = Counter(
            "slimsched_backup_damaged_files",
            "Backup files found changed (set aside as .damaged-<time>) or gone since this node wrote "
            "them, by reason (damaged, gone)",
            ["reason"],
            registry=registry,
        )
        self.index = Gauge(
            "slimsched_backup_raft_index",
            "Index of this node's newest valid backup (counted on across cold starts; 0: none)",
            registry=registry,
        )
        self.cluster_index = Gauge(
            "slimsched_backup_cluster_raft_index",
            "Highest index of a non-empty backup any node reported (backup_report), this node's included",
            registry=registry,
        )
        self.behind = Gauge(
            "slimsched_backup_behind_cluster",
            "1 when another node reported a newer backup than this node's, which this node's state or "
            "its last pass does not catch up with",
            registry=registry,
        )
        self.restores = Counter(
            "slimsched_backup_restores",
            "Cold-start restore decisions of this node (as leader, or as the holder of the chosen backup)",
            ["outcome"],
            registry=registry,
        )
