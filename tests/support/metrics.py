"""Reading /metrics: every sample of the Prometheus text, parsed by prometheus_client's own parser."""

from __future__ import annotations

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families


def scrape(client: TestClient | httpx.Response) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics as {(sample name, labels): value}, parsed by prometheus_client's own parser."""
    response = client if isinstance(client, httpx.Response) else client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)
