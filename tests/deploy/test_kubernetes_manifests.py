"""deploy/kubernetes: no cluster here, so every manifest is loaded and checked for its kind,
its required fields, and agreement with the other manifests and with the server itself."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from kolosal.cli import build_parser, settings_from_args
from kolosal.engine import EngineRegistry
from kolosal.server.observe import Metrics

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KNOWN = {  # kind -> apiVersion
    "Deployment": "apps/v1", "Service": "v1", "PersistentVolumeClaim": "v1", "ConfigMap": "v1",
    "ServiceAccount": "v1", "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1", "HorizontalPodAutoscaler": "autoscaling/v2",
    "PodMonitor": "monitoring.coreos.com/v1", "InferencePool": "inference.networking.k8s.io/v1",
    "Gateway": "gateway.networking.k8s.io/v1", "HTTPRoute": "gateway.networking.k8s.io/v1",
    "Kustomization": "kustomize.config.k8s.io/v1beta1"}


def load_all() -> dict[tuple[str, str], dict[str, Any]]:
    documents: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict), path
            kind = doc.get("kind")
            assert kind in KNOWN, (path, kind)
            assert doc.get("apiVersion") == KNOWN[kind], (path, kind, doc.get("apiVersion"))
            name = "kustomization" if kind == "Kustomization" else doc["metadata"]["name"]
            assert (kind, name) not in documents, (kind, name)
            documents[(kind, name)] = doc
    return documents


@pytest.fixture(scope="module")
def docs() -> dict[tuple[str, str], dict[str, Any]]:
    return load_all()


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def labels_select(selector: dict[str, str], deployment: dict[str, Any]) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_kustomization_lists_every_file(docs: dict) -> None:
    listed = docs[("Kustomization", "kustomization")]["resources"]
    files = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(listed) == sorted(files)


def test_deployment(docs: dict) -> None:
    deployment = docs[("Deployment", "kolosal")]
    spec, pod = deployment["spec"], deployment["spec"]["template"]["spec"]
    assert labels_select(spec["selector"]["matchLabels"], deployment)
    main = container(deployment)
    assert main["image"]
    # the server accepts every flag, and they mean what the other fields assume
    settings = settings_from_args(build_parser().parse_args(main["args"]), environ={})
    assert settings.host == "0.0.0.0" and settings.port == main["ports"][0]["containerPort"]
    assert main["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert main["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert main["startupProbe"]["httpGet"]["path"] == "/health/live"
    pause = main["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    # the grace period covers the preStop pause, the drain and a margin
    assert pod["terminationGracePeriodSeconds"] >= int(pause[1]) + settings.drain_timeout_s + 10
    assert {"cpu", "memory"} <= set(main["resources"]["requests"])
    assert "memory" in main["resources"]["limits"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in main["volumeMounts"]:
        assert mount["name"] in volumes
    models = volumes["models"]["persistentVolumeClaim"]["claimName"]
    claim = docs[("PersistentVolumeClaim", models)]
    assert claim["spec"]["accessModes"] and claim["spec"]["resources"]["requests"]["storage"]
    model_dir = Path(settings.engines[0].model_path).parent.as_posix()
    assert model_dir == main["volumeMounts"][0]["mountPath"] and settings.models_dirs == (model_dir,)


def test_service_and_podmonitor_select_the_pods(docs: dict) -> None:
    deployment = docs[("Deployment", "kolosal")]
    port_names = {p["name"] for p in container(deployment)["ports"]}
    service = docs[("Service", "kolosal")]
    assert labels_select(service["spec"]["selector"], deployment)
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])
    monitor = docs[("PodMonitor", "kolosal")]
    assert labels_select(monitor["spec"]["selector"]["matchLabels"], deployment)
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"


def test_hpa_scales_on_a_metric_the_server_exports(docs: dict) -> None:
    hpa = docs[("HorizontalPodAutoscaler", "kolosal")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "kolosal"}
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    metric = hpa["metrics"][0]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    adapter = yaml.safe_load(docs[("ConfigMap", "prometheus-adapter")]["data"]["config.yaml"])
    rules = {rule["name"]["as"]: rule for rule in adapter["rules"]}
    rule = rules[metric["pods"]["metric"]["name"]]
    series = rule["name"]["matches"]
    assert series in rule["seriesQuery"]
    exported = generate_latest(Metrics(EngineRegistry()).registry).decode()
    assert f"# TYPE {series} gauge" in exported


def test_inference_pool_and_endpoint_picker(docs: dict) -> None:
    deployment = docs[("Deployment", "kolosal")]
    pool = docs[("InferencePool", "kolosal")]["spec"]
    assert labels_select(pool["selector"]["matchLabels"], deployment)
    assert pool["targetPorts"][0]["number"] == container(deployment)["ports"][0]["containerPort"]
    picker_ref = pool["endpointPickerRef"]
    picker_service = docs[("Service", picker_ref["name"])]
    assert picker_ref["port"]["number"] in {p["port"] for p in picker_service["spec"]["ports"]}
    picker = docs[("Deployment", picker_service["spec"]["selector"]["app"])]
    assert labels_select(picker_service["spec"]["selector"], picker)
    epp = container(picker)
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in epp["args"])
    assert flags["pool-name"] == "kolosal"
    # the config file it reads is the ConfigMap mounted where the flag says
    mount = next(m for m in epp["volumeMounts"] if flags["config-file"].startswith(m["mountPath"]))
    volume = next(v for v in picker["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    key = flags["config-file"].removeprefix(mount["mountPath"]).strip("/")
    config = yaml.safe_load(docs[("ConfigMap", volume["configMap"]["name"])]["data"][key])
    assert config["kind"] == "EndpointPickerConfig"
    declared = {plugin.get("name", plugin["type"]) for plugin in config["plugins"]}
    for profile in config["schedulingProfiles"]:
        assert {ref["pluginRef"] for ref in profile["plugins"]} <= declared
    assert {"queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer"} <= declared
    # RBAC: the picker may read the pool and the pods
    role = docs[("Role", "kolosal-epp")]
    readable = {resource for rule in role["rules"] for resource in rule["resources"]}
    assert {"inferencepools", "pods"} <= readable
    binding = docs[("RoleBinding", "kolosal-epp")]
    assert binding["subjects"][0]["name"] == picker["spec"]["template"]["spec"]["serviceAccountName"]


def test_route_sends_traffic_to_the_pool(docs: dict) -> None:
    route = docs[("HTTPRoute", "kolosal")]["spec"]
    gateway = docs[("Gateway", route["parentRefs"][0]["name"])]["spec"]
    assert gateway["gatewayClassName"] and gateway["listeners"]
    backend = route["rules"][0]["backendRefs"][0]
    assert backend["kind"] == "InferencePool" and backend["group"] == "inference.networking.k8s.io"
    assert ("InferencePool", backend["name"]) in docs
