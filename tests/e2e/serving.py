"""What the e2e tests share about `capctl serve`: the functions' environment, the problem media
type and a proxy-free opener. The fixtures that start servers are in conftest.py."""

from __future__ import annotations

import urllib.request

PROBLEM = "application/problem+json"
SERVER_ENV = {
    "POWERTOOLS_METRICS_NAMESPACE": "CapacityEngineTest",
    "POWERTOOLS_SERVICE_NAME": "capacity-engine",
    "ENVIRONMENT": "test",
    "POWERTOOLS_TRACE_DISABLED": "1",  # no X-Ray daemon here
}
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never an environment proxy
