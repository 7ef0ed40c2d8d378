"""The Kubernetes manifests under deploy/k8s/: schema-valid for a pinned Kubernetes, and consistent.

No cluster here: this is what can be checked offline. Every document of every YAML file under
deploy/k8s/ is validated (strict: unknown fields are errors) against the schemas kubernetes-validate
bundles; kustomizations and the prometheus-adapter rules are not Kubernetes objects and are only
parsed and cross-checked.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.unit

K8S_VERSION = "1.37.0"  # the newest schema set kubernetes-validate 1.37.0 bundles
ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "k8s"  # deploy/monitoring holds Prometheus/Grafana files, not objects
NOT_OBJECTS = {"kustomization.yaml", "kustomization.yml", "prometheus-adapter-rules.yaml"}
KV_BYTES_PER_TOKEN = 2 * 30 * 3 * 64 * 4  # (K,V) x layers x kv heads x head dim x fp32 (SmolLM2-135M)

YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())
KUSTOMIZATIONS = [p for p in YAML_FILES if p.name in {"kustomization.yaml", "kustomization.yml"}]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _documents() -> list[tuple[Path, int, dict]]:
    docs = []
    for path in YAML_FILES:
        if path.name in NOT_OBJECTS:
            continue
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((path, i, doc))
    return docs


DOCUMENTS = _documents()
BY_KIND: dict[str, list[dict]] = {}
for _path, _i, _doc in DOCUMENTS:
    BY_KIND.setdefault(_doc.get("kind", "?"), []).append(_doc)


def _memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9, "": 1}
    number, unit = re.fullmatch(r"(\d+)([KMG]i?)?", str(quantity)).groups()
    return int(number) * units[unit or ""]


def test_manifests_found():
    kinds = {doc["kind"] for _, _, doc in DOCUMENTS}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    names = {doc["metadata"]["name"] for _, _, doc in DOCUMENTS if doc["kind"] == "Deployment"}
    assert names >= {"tuneship", "tuneship-llm"}


@pytest.mark.parametrize("doc", [d for _, _, d in DOCUMENTS], ids=[f"{_rel(p)}#{i}" for p, i, _ in DOCUMENTS])
def test_schema_valid(doc):
    # raises kubernetes_validate.ValidationError (with the failing path) on an invalid document
    assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == "1.37"


def _broken_deployment(**spec_changes) -> dict:
    doc = copy.deepcopy(next(d for d in BY_KIND["Deployment"] if d["metadata"]["name"] == "tuneship-llm"))
    doc["spec"].update(spec_changes)
    return doc


def test_invalid_type_is_rejected():
    with pytest.raises(kubernetes_validate.ValidationError, match="two"):
        kubernetes_validate.validate(_broken_deployment(replicas="two"), K8S_VERSION, strict=True)


def test_unknown_field_is_rejected_in_strict_mode():
    doc = _broken_deployment(replica=2)  # a typo of `replicas`
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=_rel)
def test_kustomization_resources_exist(path):
    kustomization = yaml.safe_load(path.read_text())
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization.get("resources", [])
    assert resources, f"{_rel(path)} lists no resources"
    for resource in resources:
        target = path.parent / resource
        assert target.is_file() or (target / "kustomization.yaml").is_file(), (
            f"{_rel(path)}: resource {resource!r} does not exist"
        )
    # and no manifest next to it is forgotten
    listed = {(path.parent / r).resolve() for r in resources}
    beside = {p.resolve() for p in path.parent.glob("*.yaml") if p.name not in NOT_OBJECTS}
    assert beside <= listed, f"{_rel(path)} does not list {sorted(p.name for p in beside - listed)}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (built-in kustomize) not installed")
@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=_rel)
def test_kustomization_renders_valid_objects(path):
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(path.parent)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d is not None]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    images = {
        c["image"]
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    kustomization = yaml.safe_load(path.read_text())
    assert images == {f"{i['newName']}:{i['newTag']}" for i in kustomization["images"]}


@pytest.mark.parametrize("deployment", BY_KIND["Deployment"], ids=lambda d: d["metadata"]["name"])
def test_selectors_and_targets_match(deployment):
    name, pod_labels = deployment["metadata"]["name"], deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    def selects(selector: dict) -> bool:
        return selector.items() <= pod_labels.items()

    assert any(selects(s["spec"]["selector"]) for s in BY_KIND["Service"]), f"no Service for {name}"
    assert any(selects(p["spec"]["selector"]["matchLabels"]) for p in BY_KIND["PodDisruptionBudget"])
    targets = [h["spec"]["scaleTargetRef"] for h in BY_KIND["HorizontalPodAutoscaler"]]
    assert {"apiVersion": "apps/v1", "kind": "Deployment", "name": name} in targets
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"] for p in container["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    threads = next(e for e in container["env"] if e["name"] == "TUNESHIP_TORCH_THREADS")
    if "value" in threads:
        assert threads["value"] == container["resources"]["limits"]["cpu"]
    else:
        assert threads["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"


def test_llm_memory_covers_model_and_kv_budget():
    deployment = next(d for d in BY_KIND["Deployment"] if d["metadata"]["name"] == "tuneship-llm")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    budget = int(env["TUNESHIP_LLM_KV_BUDGET"]["value"])
    needed = 0.54e9 + budget * KV_BYTES_PER_TOKEN + 0.6e9  # weights + KV budget + runtime
    assert _memory_bytes(container["resources"]["requests"]["memory"]) >= needed
    assert _memory_bytes(container["resources"]["limits"]["memory"]) >= needed
    assert env["TUNESHIP_API_KEY"]["valueFrom"]["secretKeyRef"]["name"]


@pytest.mark.parametrize("deployment", BY_KIND["Deployment"], ids=lambda d: d["metadata"]["name"])
def test_every_tuneship_variable_set_is_read_by_the_service(deployment):
    """A renamed setting must not leave a manifest setting a variable nothing reads."""
    source = "\n".join(p.read_text() for p in (ROOT / "bentos").glob("*.py"))
    read = set(re.findall(r"TUNESHIP_[A-Z_]+", source)) | {
        f"TUNESHIP_LLM_{name.upper()}" for name in re.findall(r'setting\("(\w+)"', source)}
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        for env in container.get("env", []):
            if env["name"].startswith("TUNESHIP_"):
                assert env["name"] in read, f"{env['name']} is read by no module of bentos/"


def test_hpa_metric_is_served_by_the_adapter_rules():
    hpa = next(h for h in BY_KIND["HorizontalPodAutoscaler"] if h["metadata"]["name"] == "tuneship-llm")
    pods = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods == ["tuneship_llm_num_requests_waiting"]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0
    rules = yaml.safe_load((DEPLOY / "llm" / "prometheus-adapter-rules.yaml").read_text())["rules"]
    served = {rule["name"]["as"] for rule in rules}
    assert set(pods) <= served
    for rule in rules:
        overrides = rule["resources"]["overrides"]
        assert overrides["pod"] == {"resource": "pod"} and overrides["namespace"] == {"resource": "namespace"}
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
