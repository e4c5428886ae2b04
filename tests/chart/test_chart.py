"""The Helm chart, checked without a cluster: lint, Kubernetes schemas, policy, what it renders."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from genmesh.runtime.settings import ServiceSettings, load_settings
from tests.chart.conftest import (
    KUBE_VERSION,
    PYTHON_SERVICES,
    VALUE_SETS,
    Rendered,
    Tools,
    helm_args,
    pod_specs,
    run,
    template,
)
from tests.gateway.process import GatewayProcess

# Custom resources have no schema in Kubernetes itself; nothing else may go unvalidated.
CUSTOM_RESOURCES = {("monitoring.coreos.com/v1", "ServiceMonitor")}
INFERENCE = ("ttt", "tti", "audio")
HTTP_SERVICES = ("gateway", "edge")


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_helm_lint_is_clean(tools: Tools, value_set: str) -> None:
    result = run([tools.helm, "lint", "--strict", *helm_args(VALUE_SETS[value_set])])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_every_manifest_matches_the_oldest_supported_kubernetes(rendered: Rendered) -> None:
    unvalidated = []
    for manifest in rendered.manifests:
        key = (manifest["apiVersion"], manifest["kind"])
        if key in CUSTOM_RESOURCES:
            unvalidated.append(key)
            continue
        try:
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{manifest['kind']} {manifest['metadata']['name']}: {exc.caught}")
    assert set(unvalidated) <= CUSTOM_RESOURCES


def test_policy_linter_has_no_findings(tools: Tools, rendered: Rendered) -> None:
    result = run(
        [tools.kube_score, "score", "--output-format", "ci", "--kubernetes-version", "v1.27", "-"],
        input=rendered.text,
    )
    findings = [
        line for line in result.stdout.splitlines() if line.startswith(("[WARNING]", "[CRITICAL]"))
    ]
    assert result.returncode == 0 and not findings, "\n".join(findings) + result.stderr


def test_policy_exceptions_are_justified_and_applied(rendered: Rendered) -> None:
    exceptions = rendered.values()["policyExceptions"]
    checks = ",".join(e["check"] for e in exceptions)
    assert all(len(e["reason"].split()) >= 5 for e in exceptions)
    for component, deployment in rendered.deployments().items():
        annotations = deployment["metadata"].get("annotations", {})
        assert annotations.get("kube-score/ignore", "") == checks, component


def test_every_pod_runs_restricted(rendered: Rendered) -> None:
    for component, spec in pod_specs(rendered):
        pod_context = spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True, component
        assert pod_context["runAsUser"] == 10001, component
        expected_seccomp = "RuntimeDefault"
        sandbox = rendered.values()["sandbox"]
        if component == "sandbox" and sandbox["isolation"]["namespaces"]:
            expected_seccomp = sandbox["isolation"]["seccompProfile"]["type"]
        assert pod_context["seccompProfile"]["type"] == expected_seccomp, component
        assert spec["automountServiceAccountToken"] is False, component
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, component
            assert context["readOnlyRootFilesystem"] is True, component
            assert context["capabilities"] == {"drop": ["ALL"]}, component
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/tmp"] in tmp_volumes, component
            assert "limits" in container["resources"], component


def test_grpc_services_have_native_grpc_probes(rendered: Rendered) -> None:
    for component, deployment in rendered.deployments().items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        port = container["ports"][0]["containerPort"]
        probes = {
            name: container[name] for name in ("startupProbe", "readinessProbe", "livenessProbe")
        }
        if component in HTTP_SERVICES:
            health_path = rendered.values()[component]["healthPath"]
            assert probes["readinessProbe"]["httpGet"]["path"] == health_path, component
            # Their health is the router's: a router outage must not restart them.
            assert "tcpSocket" in probes["livenessProbe"], component
            continue
        assert probes["readinessProbe"]["grpc"]["port"] == port, component
        assert probes["readinessProbe"]["grpc"]["service"].startswith("genmesh.v1."), component
        assert probes["startupProbe"]["grpc"] == {"port": port}, component
        assert probes["livenessProbe"]["grpc"] == {"port": port}, component
        liveness = probes["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60, component
        startup = probes["startupProbe"]
        if component in INFERENCE:
            # Model loading happens before the service reports SERVING.
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, component


def test_inference_services_and_sandbox_accept_only_the_router(rendered: Rendered) -> None:
    policies = {rendered.component(p): p["spec"] for p in rendered.of_kind("NetworkPolicy")}
    deployments = rendered.deployments()
    assert set(policies) == {*deployments, "health-check"}, "every pod has a NetworkPolicy"
    assert policies["health-check"]["ingress"] == []
    for component in set(deployments) & {*INFERENCE, "sandbox"}:
        (grpc_rule, *metrics_rules) = policies[component]["ingress"]
        sources = {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for peer in grpc_rule["from"]
        }
        assert sources == {"router", "health-check"}, component
        assert all(r["ports"][0]["port"] == 9464 for r in metrics_rules), component
    if "sandbox" in policies:
        assert policies["sandbox"]["policyTypes"] == ["Ingress", "Egress"]
        assert policies["sandbox"]["egress"] == []


def test_router_bindings_dial_the_headless_services(rendered: Rendered) -> None:
    values = rendered.values()
    bindings = {b["name"]: b for b in rendered.config("router")["bindings"]}
    services = {s["metadata"]["name"]: s["spec"] for s in rendered.of_kind("Service")}
    for binding in values["router"]["bindings"]:
        service = binding.get("service")
        if service is None:
            assert bindings[binding["name"]]["addresses"] == binding["addresses"]
        elif not values[service]["enabled"]:
            assert binding["name"] not in bindings
        else:
            (address,) = bindings[binding["name"]]["addresses"]
            host, port = address.removeprefix("dns:///").rsplit(":", 1)
            name, namespace, *_ = host.split(".")
            assert (namespace, int(port)) == ("ai", values[service]["containerPort"])
            assert services[name]["clusterIP"] == "None"
            assert services[name]["ports"][0]["port"] == int(port)


def test_edge_dials_the_router_service(rendered: Rendered) -> None:
    if "edge" not in rendered.deployments():
        return
    host, port = rendered.config("edge")["router_address"].rsplit(":", 1)
    name, namespace, *_ = host.split(".")
    router = rendered.get("Service", name)
    assert rendered.component(router) == "router" and namespace == "ai"
    assert router["spec"]["ports"][0]["port"] == int(port)
    env = rendered.deployments()["edge"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert not [e for e in env if "KEY" in e["name"]], "the edge forwards its clients' keys"


def settings_class(service: str) -> type[ServiceSettings]:
    """The service's own settings class, from its settings module."""
    module = importlib.import_module(f"genmesh.{service}.settings")
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if issubclass(cls, ServiceSettings) and cls.service_name == service:
            return cls
    raise AssertionError(f"genmesh.{service}.settings defines no settings class")


@pytest.mark.parametrize("service", [*PYTHON_SERVICES, "edge"])
def test_generated_config_loads_with_the_service_settings(
    rendered_sets: dict[str, Rendered],
    service: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each value set's config section and environment load with the service's own settings."""
    cls = settings_class(service)
    for rendered in rendered_sets.values():
        deployment = rendered.deployments().get(service)
        if deployment is None:
            continue
        section = rendered.config(service)
        config = tmp_path / f"{rendered.name}.yaml"
        config.write_text(yaml.safe_dump({service: section}))
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        literal_env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        assert literal_env["GENMESH_CONFIG"] == "/etc/genmesh/config.yaml"
        with monkeypatch.context() as env:
            for name, value in literal_env.items():
                env.setenv(name, value)
            env.setenv("GENMESH_CONFIG", str(config))
            settings = load_settings(cls)
        assert settings.port == container["ports"][0]["containerPort"], rendered.name
        assert settings.host == "0.0.0.0", rendered.name


def test_gateway_starts_with_the_rendered_flags(rendered_sets: dict[str, Rendered]) -> None:
    """The real gateway binary accepts every flag each value set renders for it (listen and
    router addresses aside, which point into the cluster)."""
    for rendered in rendered_sets.values():
        deployment = rendered.deployments().get("gateway")
        if deployment is None:
            continue
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        flags = [a for a in args if not a.startswith(("--listen=", "--router="))]
        gateway = GatewayProcess("127.0.0.1:9", *flags)
        gateway.terminate()


def test_gpu_values_request_gpus_on_gpu_nodes(rendered_sets: dict[str, Rendered]) -> None:
    for component, spec in pod_specs(rendered_sets["defaults"]):
        for container in spec["containers"]:
            assert "nvidia.com/gpu" not in container["resources"]["limits"], component
    deployments = rendered_sets["gpu"].deployments()
    for component in INFERENCE:
        spec = deployments[component]["spec"]["template"]["spec"]
        assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        # No surge pod waiting forever for a GPU no node has spare.
        strategy = deployments[component]["spec"]["strategy"]
        assert strategy["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
            "tolerations"
        ]
    models = {
        component: next(v for v in spec["volumes"] if v["name"] == "models")
        for component in ("ttt", "tti")
        for spec in [deployments[component]["spec"]["template"]["spec"]]
    }
    assert models["ttt"]["persistentVolumeClaim"] == {
        "claimName": "genmesh-ttt-models",
        "readOnly": True,
    }
    assert models["tti"]["persistentVolumeClaim"]["claimName"] == "diffusion-models"
    claims = rendered_sets["gpu"].of_kind("PersistentVolumeClaim")
    assert [c["metadata"]["name"] for c in claims] == ["genmesh-ttt-models"]
    assert "replicas" not in deployments["ttt"]["spec"]  # the HPA owns it
    (hpa,) = rendered_sets["gpu"].of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "genmesh-ttt"


def test_router_only_deploys_the_router_alone(rendered_sets: dict[str, Rendered]) -> None:
    rendered = rendered_sets["router-only"]
    assert set(rendered.deployments()) == {"router"}
    assert {rendered.component(s) for s in rendered.of_kind("Service")} == {"router"}
    config = rendered.config("router")
    assert [b["name"] for b in config["bindings"]] == ["remote-text"]
    assert "sandbox_address" not in config
    policy = rendered.get("NetworkPolicy", "genmesh-router")
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 50052}
    assert not rendered.of_kind("PodDisruptionBudget")


def test_hardened_values_lock_the_mesh_down(rendered_sets: dict[str, Rendered]) -> None:
    rendered = rendered_sets["hardened"]
    deployments = rendered.deployments()
    sandbox = deployments["sandbox"]["spec"]["template"]["spec"]
    assert sandbox["runtimeClassName"] == "gvisor"
    assert sandbox["hostUsers"] is False
    assert sandbox["securityContext"]["seccompProfile"] == {
        "type": "Localhost",
        "localhostProfile": "operator/genmesh/sandbox.json",
    }
    router = deployments["router"]["spec"]["template"]["spec"]
    env = {e["name"] for e in router["containers"][0]["env"]}
    assert "GENMESH_API_KEY" not in env  # client keys come from Vault
    token = next(v for v in router["volumes"] if v["name"] == "vault-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "vault"
    vault = rendered.config("router")["vault"]
    assert vault["auth"] == "kubernetes"
    assert vault["jwt_path"] == "/var/run/secrets/vault/token"
    for policy in rendered.of_kind("NetworkPolicy"):
        for rule in policy["spec"]["ingress"]:
            assert rule.get("from"), f"{policy['metadata']['name']} admits anyone"
    assert rendered.get("PodDisruptionBudget", "genmesh-router")["spec"]["minAvailable"] == 2


@pytest.mark.parametrize("api_versions", [[], ["monitoring.coreos.com/v1/ServiceMonitor"]])
def test_service_monitor_renders_only_where_its_api_exists(
    tools: Tools, api_versions: list[str]
) -> None:
    """The hardened values ask for one; a cluster without the Prometheus Operator gets none."""
    flags = [f"--api-versions={v}" for v in api_versions]
    result = template(tools, VALUE_SETS["hardened"], *flags)
    assert result.returncode == 0, result.stderr
    monitors = Rendered("hardened", result.stdout).of_kind("ServiceMonitor")
    assert len(monitors) == len(api_versions)


def test_helm_test_pod_checks_every_enabled_service(rendered: Rendered) -> None:
    (pod,) = rendered.of_kind("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    targets = pod["spec"]["containers"][0]["args"][1:]
    checked = {target.split(":")[1].split(".")[0] for target in targets}
    expected = {
        f"genmesh-{c}" + ("" if c in ("router", *HTTP_SERVICES) else "-headless")
        for c in rendered.deployments()
    }
    assert checked == expected


def test_keys_come_from_a_secret_never_from_values(rendered_sets: dict[str, Rendered]) -> None:
    rendered = rendered_sets["defaults"]
    (secret,) = rendered.of_kind("Secret")
    assert set(secret["data"]) == {"api-key", "internal-key"}
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for component, spec in pod_specs(rendered):
        for container in spec["containers"]:
            for env in container.get("env", []):
                if "KEY" in env["name"]:
                    assert env["valueFrom"]["secretKeyRef"]["name"] == "genmesh-keys", component


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("router.replicas=3", "at '/router/replicas'"),
        ("podSecurityContext.runAsNonRoot=false", "runAsNonRoot"),
        ("sandbox.isolation.seccompProfile.type=Bogus", "seccompProfile"),
        ("ttt.image.digest=latest", "digest"),
        ("containerSecurityContext.privileged=true", "privileged"),
        ("router.config.api_key=plaintext", "api_key"),
    ],
)
def test_schema_rejects_bad_values(tools: Tools, setting: str, message: str) -> None:
    result = template(tools, None, "--set", setting)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


def test_vault_needs_its_network_peers(tools: Tools) -> None:
    result = template(tools, None, "--set", "vault.enabled=true,vault.address=https://vault:8200")
    assert result.returncode != 0
    assert "vault.networkPolicyPeers is required" in result.stderr


def test_configmaps_roll_the_pods_they_configure(rendered: Rendered) -> None:
    for component, deployment in rendered.deployments().items():
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        assert ("checksum/config" in annotations) == (component != "gateway"), component
