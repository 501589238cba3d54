"""SlimFaas's own demo material, as the compatibility and catalog tests read it."""

from __future__ import annotations

from typing import Any

# SlimFaas: demo/deployment-cron.yaml (docs/jobs.md 2.3), as JSON.
DEMO_CRONJOB: dict[str, Any] = {
    "metadata": {
        "name": "fibonacci5",
        "annotations": {
            "SlimFaas/Job": "true",
            "SlimFaas/DefaultVisibility": "Public",
            "SlimFaas/NumberParallelJob": "1",
            "SlimFaas/DependsOn": "fibonacci1,fibonacci2",
            "SlimFaas/Schedules": '[{"Schedule":"*/2 * * * *","Args":["39"]}]',
        },
    },
    "spec": {
        "schedule": "0 0 * * *",
        "suspend": True,
        "jobTemplate": {
            "spec": {
                "backoffLimit": 1,
                "ttlSecondsAfterFinished": 60,
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "fibonacci11",
                                "image": "axaguildev/fibonacci-batch:latest",
                                "resources": {
                                    "requests": {"cpu": "400m", "memory": "400Mi"},
                                    "limits": {"cpu": "400m", "memory": "400Mi"},
                                },
                            }
                        ],
                        "restartPolicy": "Never",
                    }
                },
            }
        },
    },
}
