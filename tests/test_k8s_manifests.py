"""The Kubernetes deployment (docker/k8s/), checked offline: the Helm chart is rendered and
linted by Helm's own Go engine (helm-python-sdk binds Helm's SDK; no helm binary, no cluster),
every manifest it renders validates against the Kubernetes API schemas bundled in
kubernetes-validate (strict: no unknown field), for several sets of values and for the oldest
and newest Kubernetes the chart is meant for; and the parts refer to each other as they must:
Services select the pods they front, the HPA scales the Triton Deployment on the metrics the
Prometheus adapter serves, probes ask paths that a real tritonserver and our app answer, and the
orchestrator's arguments are flags our parser takes, naming the Triton Service.
"""

from __future__ import annotations

import urllib.request

import helm_python
import kubernetes_validate
import pytest
import yaml
from conftest import LIPSYNC_MODEL, TTS_MODEL
from orchestrator_process import PROJECT_ROOT

from orchestrator.app import create_app
from orchestrator.settings import Settings, parse_settings

CHART = PROJECT_ROOT / "docker" / "k8s" / "livehuman"
ADAPTER_VALUES = PROJECT_ROOT / "docker" / "k8s" / "prometheus-adapter-values.yaml"
RELEASE = "avatar"
NAMESPACE = "avatars"
# The chart's kubeVersion floor (apps.kubernetes.io/pod-index) and the newest schemas bundled.
KUBE_VERSIONS = ["1.28.0", kubernetes_validate.utils.latest_version()]
# CRDs have no bundled schema: their fields are checked by the cross-reference tests.
CRD_GROUPS = ("monitoring.coreos.com/",)
HELM_WARNING = 2  # helm lint severities: 1 info, 2 warning, 3 error

VALUE_SETS = {
    "defaults": {},
    "fixed-size": {"triton": {"autoscaling": {"enabled": False}, "replicas": 3}},
    "everything": {
        "triton": {"podMonitor": {"enabled": True}},
        "orchestrator": {"hostNetwork": False, "advertiseNodeIP": True, "replicas": 5,
                         "workers": 8,
                         "apiTokenSecret": {"name": "livehuman-token"},
                         # a TURN server needs its user (issue 25: refused without one)
                         "extraArgs": ["--turn", "turn:turn.example.com:3478?transport=udp",
                                       "--turn-username", "livehuman",
                                       "--turn-password", "example"]},
    },
}


def chart_values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def render(values: dict) -> list[dict]:
    chart = helm_python.Chart.load(CHART)
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc]


def one(resources: list[dict], kind: str, component: str) -> dict:
    found = [r for r in resources if r["kind"] == kind
             and r["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"{kind} of {component}: {[r['metadata']['name'] for r in found]}"
    return found[0]


def by_name(resources: list[dict], kind: str, name: str) -> dict:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"no single {kind} named {name}"
    return found[0]


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container(workload: dict) -> dict:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def port_names(workload: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(workload)["ports"]}


def flag_values(args: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


@pytest.fixture(scope="module", params=list(VALUE_SETS))
def rendered(request) -> tuple[str, dict, list[dict]]:
    values = VALUE_SETS[request.param]
    return request.param, values, render(values)


def test_chart_lints_clean():
    for values in VALUE_SETS.values():
        report = helm_python.lint(CHART, values, strict=True, namespace=NAMESPACE,
                                  kube_version=f"v{KUBE_VERSIONS[0]}")
        assert not report["errors"], report
        assert not [m for m in report["messages"] if m["severity"] >= HELM_WARNING], report


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(rendered, kube_version):
    name, _, resources = rendered
    kinds = {r["kind"] for r in resources}
    assert {"Deployment", "StatefulSet", "Service", "PodDisruptionBudget"} <= kinds, kinds
    for resource in resources:
        if resource["apiVersion"].startswith(CRD_GROUPS):
            continue
        try:
            kubernetes_validate.validate(resource, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {resource['kind']}/{resource['metadata']['name']} "
                        f"(Kubernetes {kube_version}): {path}: {exc.message}")


def test_services_and_budgets_select_their_pods(rendered):
    _, _, resources = rendered
    triton = one(resources, "Deployment", "triton")
    orchestrators = one(resources, "StatefulSet", "orchestrator")
    workloads = {"triton": triton, "orchestrator": orchestrators}
    for service in (r for r in resources if r["kind"] == "Service"):
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        selector = service["spec"]["selector"]
        for other, workload in workloads.items():
            assert selects(selector, pod_labels(workload)) == (other == component), (
                f"Service {service['metadata']['name']} and the {other} pods")
        names = port_names(workloads[component])
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, (service["metadata"]["name"], port)
    for budget in (r for r in resources if r["kind"] == "PodDisruptionBudget"):
        component = budget["metadata"]["labels"]["app.kubernetes.io/component"]
        assert selects(budget["spec"]["selector"]["matchLabels"],
                       pod_labels(workloads[component]))
    for workload in workloads.values():
        assert selects(workload["spec"]["selector"]["matchLabels"], pod_labels(workload))


def test_triton_serves_grpc_http_and_metrics_on_a_gpu(rendered):
    _, values, resources = rendered
    triton = one(resources, "Deployment", "triton")
    service = one(resources, "Service", "triton")
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert port_names(triton) == ports
    resources_ = container(triton)["resources"]
    assert resources_["limits"]["nvidia.com/gpu"] == resources_["requests"]["nvidia.com/gpu"] == 1
    autoscaled = values.get("triton", {}).get("autoscaling", {}).get("enabled", True)
    # With an HPA the Deployment names no replica count (an upgrade would reset the HPA's).
    assert ("replicas" in triton["spec"]) != autoscaled
    assert any(r["kind"] == "HorizontalPodAutoscaler" for r in resources) == autoscaled


def test_probes_ask_what_triton_and_the_orchestrator_answer(rendered, triton):
    _, _, resources = rendered
    triton_pods = one(resources, "Deployment", "triton")
    checked = 0
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container(triton_pods)[probe]["httpGet"]
        assert get["port"] in port_names(triton_pods) and get["port"] == "http"
        with urllib.request.urlopen(f"{triton.http_url}{get['path']}", timeout=10) as answer:
            assert answer.status == 200, get  # a real tritonserver's HTTP endpoint
        checked += 1
    orchestrators = one(resources, "StatefulSet", "orchestrator")
    app_paths = {r.canonical for r in create_app(Settings()).router.resources()}
    readiness = container(orchestrators)["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/healthz" and readiness["path"] in app_paths
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container(orchestrators)[probe]
        port = (spec.get("httpGet") or spec["tcpSocket"])["port"]
        assert port in port_names(orchestrators), (probe, port)
    assert checked == 3


def test_hpa_scales_triton_on_the_adapters_metrics(rendered, triton):
    _, _, resources = rendered
    hpas = [r for r in resources if r["kind"] == "HorizontalPodAutoscaler"]
    if not hpas:
        pytest.skip("autoscaling is off in this value set")
    (hpa,) = hpas
    deployment = one(resources, "Deployment", "triton")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1", "Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    served = {rule["name"]["as"]: rule for rule in rules}
    wanted = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    assert wanted and set(wanted) <= set(served), (wanted, list(served))
    # The Triton metrics the rules read: a real tritonserver exports the request metrics (the
    # GPU metric, nv_gpu_utilization, exists only on a GPU: tritonserver's metrics docs).
    with urllib.request.urlopen(triton.metrics_url, timeout=10) as answer:
        exported = answer.read().decode()
    for metric in ("nv_inference_queue_duration_us", "nv_inference_request_success"):
        assert f'{metric}{{model="{LIPSYNC_MODEL}"' in exported or \
            f'{metric}{{model="{TTS_MODEL}"' in exported, metric
        assert any(metric in rule["metricsQuery"] for rule in rules), metric
    for rule in rules:
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]
        assert "<<.GroupBy>>" in rule["metricsQuery"]


def test_pod_monitor_scrapes_the_triton_metrics_port():
    resources = render(VALUE_SETS["everything"])
    (monitor,) = [r for r in resources if r["kind"] == "PodMonitor"]
    triton = one(resources, "Deployment", "triton")
    assert selects(monitor["spec"]["selector"]["matchLabels"], pod_labels(triton))
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    assert "metrics" in port_names(triton)


def test_orchestrators_use_the_triton_service_and_drain_within_their_grace(rendered):
    _, values, resources = rendered
    orchestrators = one(resources, "StatefulSet", "orchestrator")
    triton_service = one(resources, "Service", "triton")
    args = container(orchestrators)["args"]
    # Every argument is a flag our own parser takes (a typo would crash-loop the pods).
    # The instance id comes from the environment (the pod's ordinal).
    settings = parse_settings([a.replace("$(NODE_IP)", "10.0.0.7") for a in args]
                              + ["--instance-id", "0"])
    grpc = {p["name"]: p["port"] for p in triton_service["spec"]["ports"]}["grpc"]
    assert settings.triton_url == f"{triton_service['metadata']['name']}:{grpc}"
    flags = flag_values(args)
    assert int(flags["port"]) == port_names(orchestrators)["http"] == settings.port
    # --workers: the chart's value; every pod's workers' instance ids fit the session ids.
    workers = values.get("orchestrator", {}).get("workers",
                                                 chart_values()["orchestrator"]["workers"])
    assert settings.workers == workers > 1
    replicas = orchestrators["spec"]["replicas"]
    parse_settings([a.replace("$(NODE_IP)", "10.0.0.7") for a in args]  # SystemExit if not
                   + ["--instance-id", str(replicas - 1)])
    grace = orchestrators["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.drain_timeout_s > 0, (grace, settings.drain_timeout_s)
    env = {e["name"]: e for e in container(orchestrators)["env"]}
    # The instance id is the pod's ordinal: unique among the pods, carried in session ids.
    assert env["LIVEHUMAN_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['apps.kubernetes.io/pod-index']"
    if "$(NODE_IP)" in " ".join(args):
        assert env["NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    if values.get("orchestrator", {}).get("apiTokenSecret", {}).get("name"):
        assert "secretKeyRef" in env["LIVEHUMAN_API_TOKEN"]["valueFrom"]
    spec = orchestrators["spec"]["template"]["spec"]
    if spec.get("hostNetwork"):
        assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"  # else the Service name fails


def test_every_orchestrator_is_reachable_by_name_while_draining(rendered):
    """--peer-url names each pod as its StatefulSet's headless Service does (pod N:
    <statefulset>-N.<service>), and that Service lists pods that are not ready (draining)."""
    _, _, resources = rendered
    orchestrators = one(resources, "StatefulSet", "orchestrator")
    peers = by_name(resources, "Service", orchestrators["spec"]["serviceName"])
    assert peers["spec"]["clusterIP"] == "None"
    assert peers["spec"]["publishNotReadyAddresses"] is True
    assert selects(peers["spec"]["selector"], pod_labels(orchestrators))
    args = container(orchestrators)["args"]
    settings = parse_settings([a.replace("$(NODE_IP)", "10.0.0.7") for a in args]
                              + ["--instance-id", "0"])
    port = port_names(orchestrators)["http"]
    assert settings.peer_url.format(instance=3) == (
        f"http://{orchestrators['metadata']['name']}-3.{peers['metadata']['name']}:{port}")
