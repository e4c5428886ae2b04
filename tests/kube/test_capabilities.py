"""Optional resources only where the cluster serves their API: the hardened values ask for a
ServiceMonitor, which a cluster without the Prometheus Operator's CRDs could not take."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.kube.cluster import Cluster
from tests.kube.conftest import Helm

CRD = Path(__file__).parent / "fixtures" / "servicemonitor-crd.yaml"
SKIPPED = "none was created"


def test_service_monitor_appears_once_its_api_exists(
    helm: Helm, cluster: Cluster, namespace: str
) -> None:
    notes = helm.chart("install", namespace, "hardened")
    assert SKIPPED in notes
    assert "ServiceMonitor" not in {m["kind"] for m in helm.manifests(namespace)}

    cluster.create(yaml.safe_load(CRD.read_text()))
    cluster.wait_for_kind("monitoring.coreos.com/v1", "ServiceMonitor")
    notes = helm.chart("upgrade", namespace, "hardened")
    assert SKIPPED not in notes
    (monitor,) = [m for m in helm.manifests(namespace) if m["kind"] == "ServiceMonitor"]
    copy = cluster.get(monitor, namespace)
    assert copy is not None
    assert copy["spec"]["endpoints"][0]["port"] == "metrics"
    assert cluster.strict_dry_run_apply(monitor, namespace) == ""
