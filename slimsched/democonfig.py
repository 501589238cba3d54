"""The job configuration ``slimsched local`` uses when given none, so the README's first commands work.

It mirrors the SlimFaas documentation's ``fibonacci`` example, made Public so it can be called
from a browser or curl on the host.
"""

DEMO_JOBS_CONFIGURATION = """{
  "Configurations": {
    "fibonacci": {
      "Image": "axaguildev/fibonacci-batch:latest",
      "ImagesWhitelist": ["axaguildev/fibonacci-batch:*"],
      "Resources": {
        "Requests": {"cpu": "400m", "memory": "400Mi"},
        "Limits": {"cpu": "400m", "memory": "400Mi"}
      },
      "BackoffLimit": 1,
      "Visibility": "Public",
      "NumberParallelJob": 2,
      "TtlSecondsAfterFinished": 36000,
      "RestartPolicy": "Never"
    }
  },
  "Schedules": {}
}
"""
