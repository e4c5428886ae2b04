"""helm install, upgrade and uninstall of the chart on a real API server, with the default values
and every ci/*-values.yaml: what helm sends passes the server's admission (restricted Pod
Security included) and strict validation, is stored, changes on upgrade and goes on uninstall."""

from __future__ import annotations

import pytest

from tests.chart.conftest import VALUE_SETS
from tests.kube.cluster import Cluster, Manifest
from tests.kube.conftest import RELEASE, Helm, restricted_namespace


def stored(cluster: Cluster, manifests: list[Manifest], namespace: str) -> list[Manifest]:
    """The server's copy of every manifest, each of which must exist."""
    found = []
    for manifest in manifests:
        copy = cluster.get(manifest, namespace)
        assert copy is not None, f"{manifest['kind']} {manifest['metadata']['name']} is missing"
        found.append(copy)
    return found


def generated_keys(cluster: Cluster, manifests: list[Manifest], namespace: str) -> Manifest:
    (secret,) = [m for m in manifests if m["kind"] == "Secret"]
    copy = cluster.get(secret, namespace)
    assert copy is not None
    return copy


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_install_upgrade_uninstall(
    helm: Helm, cluster: Cluster, namespace: str, value_set: str
) -> None:
    helm.chart("install", namespace, value_set)
    manifests = helm.manifests(namespace)
    assert {"Deployment", "Service", "ConfigMap", "Secret", "NetworkPolicy"} <= {
        m["kind"] for m in manifests
    }
    for manifest, copy in zip(manifests, stored(cluster, manifests, namespace), strict=True):
        annotations = copy["metadata"].get("annotations", {})
        assert annotations["meta.helm.sh/release-name"] == RELEASE, copy["metadata"]["name"]
        assert manifest["metadata"]["labels"].items() <= copy["metadata"]["labels"].items()
        assert cluster.strict_dry_run_apply(manifest, namespace) == ""
    keys = generated_keys(cluster, manifests, namespace)["data"]

    helm.chart("upgrade", namespace, value_set, "--set", "commonLabels.rollout=second")
    upgraded = helm.manifests(namespace)
    assert [m["metadata"]["name"] for m in upgraded] == [m["metadata"]["name"] for m in manifests]
    for copy in stored(cluster, upgraded, namespace):
        assert copy["metadata"]["labels"]["rollout"] == "second", copy["metadata"]["name"]
        if copy["kind"] == "Deployment":
            pod_labels = copy["spec"]["template"]["metadata"]["labels"]
            assert pod_labels["rollout"] == "second"
    # The chart's `lookup` read the keys back from the server instead of drawing new ones.
    assert generated_keys(cluster, upgraded, namespace)["data"] == keys

    result = helm("uninstall", RELEASE, "-n", namespace)
    assert result.returncode == 0, result.stderr
    for manifest in upgraded:
        left = cluster.get(manifest, namespace)
        name = f"{manifest['kind']} {manifest['metadata']['name']}"
        # The keys and the model claims are kept, so a reinstall neither locks clients out nor
        # downloads the models again.
        kept = manifest["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep"
        assert (left is not None) == kept, name
        if manifest["kind"] == "Secret":
            assert left is not None and left["data"] == keys
    assert helm("status", RELEASE, "-n", namespace).returncode != 0


def test_names_yaml_would_read_as_booleans_stay_names(helm: Helm, cluster: Cluster) -> None:
    """`on` and `no` are booleans to YAML 1.1, and valid release and namespace names."""
    namespace = restricted_namespace(cluster, "no")
    helm.chart("install", namespace, "defaults", release="on")
    for copy in stored(cluster, helm.manifests(namespace, release="on"), namespace):
        assert copy["metadata"]["namespace"] == "no"
        assert copy["metadata"]["labels"]["app.kubernetes.io/instance"] == "on"
