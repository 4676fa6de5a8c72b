"""The Kubernetes manifests in gateway-api/.

1. Every YAML document there is valid against the real schema of its kind: the
   vendored CRDs in ../shared/crds (Gateway API v1.6.1, Envoy Gateway v1.9.0)
   or, for built-in kinds (Namespace, Service, ConfigMap, Deployment, ...), the
   Kubernetes OpenAPI schema that the `kubernetes-validate` package ships.
   Validation is JSON Schema (`jsonschema`) plus what the apiserver adds on top
   of it, as far as it can be done without a cluster; see gateway-api/README.md
   for what is and is not checked.
2. The validator catches mistakes: mutated manifests fail.
3. The manifests route as examples/tollgate.yaml (and its rendering,
   envoy/local.json) does, and run the rate-limit service the guard calls.
4. The EnvoyPatchPolicy applies to the xDS that Envoy Gateway generates for
   these manifests (as modelled here from its v1.9.0 source) and the patched
   configuration passes the pinned Envoy's `--mode validate`.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "gateway-api"
HELM_VALUES = MANIFESTS / "helm" / "envoy-gateway-values.yaml"
# The vendored CRDs sit beside the repository (in CI: <tmp>/fresh and
# <tmp>/shared), so they are found relative to the repository root.
CRD_DIR = ROOT.parent / "shared" / "crds"
TOLLGATE_CONFIG = ROOT / "examples" / "tollgate.yaml"
LOCAL_BOOTSTRAP = ROOT / "envoy" / "local.json"
ROUTER_SOURCE = ROOT / "filters" / "router" / "src" / "lib.rs"
# Kubernetes API version whose schemas validate the core kinds.
KUBERNETES_VERSION = "1.35.0"

GATEWAY_API_GROUP = "gateway.networking.k8s.io"
ENVOY_GATEWAY_GROUP = "gateway.envoyproxy.io"
EXTENSION_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PLACEHOLDER = re.compile(r"\$\{(TOLLGATE_[A-Z0-9_]+)\}")


# --- loading ------------------------------------------------------------------


@dataclass
class Document:
    file: Path
    index: int
    body: dict

    @property
    def where(self) -> str:
        meta = self.body.get("metadata") or {}
        return f"{self.file.relative_to(ROOT)}#{self.index} {self.body.get('kind')}/{meta.get('name')}"


def manifest_files() -> list[Path]:
    """Every YAML file under gateway-api/ that holds Kubernetes objects
    (the Helm values under helm/ are not objects; they are checked apart)."""
    files = sorted(p for p in MANIFESTS.rglob("*") if p.suffix in (".yaml", ".yml"))
    return [p for p in files if p.parent != HELM_VALUES.parent]


def load_documents(files: list[Path] | None = None) -> list[Document]:
    documents = []
    for path in files if files is not None else manifest_files():
        for index, body in enumerate(yaml.safe_load_all(path.read_text())):
            if body is None:
                continue
            documents.append(Document(path, index, body))
    return documents


def crd_dir() -> Path:
    if not CRD_DIR.is_dir():
        pytest.fail(
            f"the vendored CRD schemas are missing: expected {CRD_DIR} (the `shared/crds` directory "
            f"beside the repository root {ROOT}); the Kubernetes manifests cannot be validated without them",
            pytrace=False,
        )
    return CRD_DIR


# --- schemas --------------------------------------------------------------------

OBJECT_META_REF = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def kubernetes_schema_dir() -> Path:
    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    return base / f"v{KUBERNETES_VERSION}-local-strict"


def kubernetes_schema_path(api_version: str, kind: str) -> Path:
    """Where kubernetes-validate keeps a built-in kind's schema (it may not exist)."""
    group, _, version = api_version.rpartition("/")
    api = f"{group.split('.')[0]}-{version}" if group else version
    return kubernetes_schema_dir() / f"{kind.lower()}-{api}.json"


def kubernetes_registry() -> Registry:
    definitions = json.loads((kubernetes_schema_dir() / "_definitions.json").read_text())
    return Resource.from_contents(definitions) @ Registry()


def structural_to_json_schema(schema: dict, path: str = "") -> dict:
    """A CRD's structural OpenAPI v3 schema as plain JSON Schema, with the
    Kubernetes extensions turned into what the apiserver does with them:
    - `x-kubernetes-preserve-unknown-fields`: unknown fields are kept (allowed);
    - otherwise an object's unknown fields would be pruned silently, so they
      are an error here (`additionalProperties: false`);
    - `x-kubernetes-int-or-string`: an integer or a string;
    - `x-kubernetes-validations` (CEL), list types and map keys are checked by
      `walk_extensions` instead, where they can be.
    The root `metadata` is the real ObjectMeta schema."""
    out: dict[str, Any] = {}
    preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("description", "default", "example"):
            continue
        if key == "properties":
            out[key] = {name: structural_to_json_schema(sub, f"{path}.{name}") for name, sub in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = structural_to_json_schema(value, f"{path}[]")
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [structural_to_json_schema(sub, path) for sub in value]
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("type") == "object" and not preserve and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if path == "":
        out.setdefault("properties", {})
        out["properties"]["metadata"] = {"$ref": OBJECT_META_REF}
        out.setdefault("required", [])
        for required in ("apiVersion", "kind", "metadata"):
            if required not in out["required"]:
                out["required"].append(required)
    return out


FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("int32")
def _int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@FORMATS.checks("int64")
def _int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


@FORMATS.checks("byte")
def _byte(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        base64.b64decode(value, validate=True)
        return True
    except ValueError:
        return False


@dataclass
class Kind:
    group: str
    version: str
    kind: str
    namespaced: bool
    schema: dict  # the CRD's own structural schema (for the CEL / list walk)
    validator: jsonschema.protocols.Validator | None = None  # built lazily


@dataclass
class Schemas:
    crds: dict[tuple[str, str, str], Kind]
    registry: Registry

    def validator(self, kind: Kind) -> jsonschema.protocols.Validator:
        if kind.validator is None:
            converted = structural_to_json_schema(kind.schema)
            kind.validator = jsonschema.Draft202012Validator(converted, registry=self.registry,
                                                               format_checker=FORMATS)
        return kind.validator


def load_schemas() -> Schemas:
    crds: dict[tuple[str, str, str], Kind] = {}
    for path in sorted(crd_dir().rglob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if not version.get("served", False):
                    continue
                key = (spec["group"], version["name"], spec["names"]["kind"])
                crds[key] = Kind(spec["group"], version["name"], spec["names"]["kind"],
                                 spec["scope"] == "Namespaced", version["schema"]["openAPIV3Schema"])
    assert crds, f"no CustomResourceDefinition found under {CRD_DIR}"
    return Schemas(crds, kubernetes_registry())


@pytest.fixture(scope="module")
def schemas() -> Schemas:
    return load_schemas()


# --- CEL rules re-implemented ---------------------------------------------------
#
# The apiserver evaluates each `x-kubernetes-validations` rule with `self` bound
# to the value at the schema node that declares it. No CEL engine runs here; the
# rules that bear on these manifests are written out in Python below, keyed by
# their exact text, and run at the node where the CRD declares them, with the
# CRD's own message. A rule whose text changes upstream is no longer matched;
# `test_every_reimplemented_rule_exists_in_the_crds` then fails.


def _has(value: dict, name: str) -> bool:
    return isinstance(value, dict) and name in value


def _one_of_types(self: dict, type_name: str, field_name: str) -> bool:
    return _has(self, field_name) if self.get("type") == type_name else not _has(self, field_name)


POLICY_TARGET_KINDS = ["Gateway", "ListenerSet", "HTTPRoute", "GRPCRoute", "UDPRoute", "TCPRoute", "TLSRoute"]

CEL_RULES: dict[str, Callable[[Any], bool]] = {
    # EnvoyExtensionPolicy wasm[].code
    "self.type == 'HTTP' ? has(self.http) : !has(self.http)": lambda s: _one_of_types(s, "HTTP", "http"),
    "self.type == 'Image' ? has(self.image) : !has(self.image)": lambda s: _one_of_types(s, "Image", "image"),
    # BackendTrafficPolicy healthCheck.active
    "self.type == 'TCP' ? has(self.tcp) : !has(self.tcp)": lambda s: _one_of_types(s, "TCP", "tcp"),
    "has(self.grpc) ? self.type == 'GRPC' : true": lambda s: s.get("type") == "GRPC" if _has(s, "grpc") else True,
    "!has(self.requestBody) || (has(self.method) && self.method.upperAscii() in ['POST','PUT'])":
        lambda s: not _has(s, "requestBody") or (_has(s, "method") and s["method"].upper() in ("POST", "PUT")),
    # Policies: targets (EnvoyExtensionPolicy, BackendTrafficPolicy; the text differs in trailing blanks)
    "(has(self.targetRef) && !has(self.targetRefs)) || (!has(self.targetRef) && has(self.targetRefs)) || "
    "(has(self.targetSelectors) && self.targetSelectors.size() > 0) ":
        lambda s: (_has(s, "targetRef") != _has(s, "targetRefs")) or len(s.get("targetSelectors") or []) > 0,
    "has(self.targetRef) ? self.targetRef.group == 'gateway.networking.k8s.io' : true":
        lambda s: s["targetRef"].get("group") == GATEWAY_API_GROUP if _has(s, "targetRef") else True,
    "has(self.targetRef) ? self.targetRef.group == 'gateway.networking.k8s.io' : true ":
        lambda s: s["targetRef"].get("group") == GATEWAY_API_GROUP if _has(s, "targetRef") else True,
    "has(self.targetRef) ? self.targetRef.kind in ['Gateway', 'ListenerSet', 'HTTPRoute', 'GRPCRoute', 'UDPRoute', "
    "'TCPRoute', 'TLSRoute'] : true":
        lambda s: s["targetRef"].get("kind") in POLICY_TARGET_KINDS if _has(s, "targetRef") else True,
    "has(self.targetRefs) ? self.targetRefs.all(ref, ref.group == 'gateway.networking.k8s.io') : true ":
        lambda s: all(r.get("group") == GATEWAY_API_GROUP for r in s["targetRefs"]) if _has(s, "targetRefs") else True,
    "has(self.targetRefs) ? self.targetRefs.all(ref, ref.kind in ['Gateway', 'ListenerSet', 'HTTPRoute', 'GRPCRoute', "
    "'UDPRoute', 'TCPRoute', 'TLSRoute']) : true ":
        lambda s: all(r.get("kind") in POLICY_TARGET_KINDS for r in s["targetRefs"]) if _has(s, "targetRefs") else True,
    # Backend
    "(has(self.fqdn) || has(self.ip) || has(self.unix))":
        lambda s: any(_has(s, k) for k in ("fqdn", "ip", "unix")),
    "((has(self.fqdn) && !(has(self.ip) || has(self.unix))) || (has(self.ip) && !(has(self.fqdn) || "
    "has(self.unix))) || (has(self.unix) && !(has(self.ip) || has(self.fqdn))))":
        lambda s: sum(_has(s, k) for k in ("fqdn", "ip", "unix")) == 1,
    "!(has(self.caCertificateRefs) && size(self.caCertificateRefs) > 0 && has(self.wellKnownCACertificates) && "
    "self.wellKnownCACertificates != \"\")":
        lambda s: not (len(s.get("caCertificateRefs") or []) > 0 and s.get("wellKnownCACertificates", "") != ""),
    "!((has(self.insecureSkipVerify) && self.insecureSkipVerify) && ((has(self.caCertificateRefs) && "
    "size(self.caCertificateRefs) > 0) || (has(self.wellKnownCACertificates) && self.wellKnownCACertificates != \"\")))":
        lambda s: not (s.get("insecureSkipVerify") and (len(s.get("caCertificateRefs") or []) > 0
                                                          or s.get("wellKnownCACertificates", "") != "")),
    "!(has(self.sni) && has(self.autoSNIFromEndpointHostname) && self.autoSNIFromEndpointHostname)":
        lambda s: not (_has(s, "sni") and s.get("autoSNIFromEndpointHostname")),
    "self.type != 'DynamicResolver' || !has(self.endpoints)":
        lambda s: s.get("type") != "DynamicResolver" or not _has(s, "endpoints"),
    # EnvoyProxy bootstrap
    "self.type == 'JSONPatch' ? self.jsonPatches.size() > 0 : has(self.value)":
        lambda s: len(s.get("jsonPatches") or []) > 0 if s.get("type", "Replace") == "JSONPatch" else _has(s, "value"),
    # HTTPRoute
    "!(has(self.request) && has(self.backendRequest) && duration(self.request) != duration('0s') && "
    "duration(self.backendRequest) > duration(self.request))":
        lambda s: not (_has(s, "request") and _has(s, "backendRequest") and _duration(s["request"]) != 0
                       and _duration(s["backendRequest"]) > _duration(s["request"])),
    "(has(self.backendRefs) && size(self.backendRefs) > 0) ? (!has(self.filters) || self.filters.all(f, "
    "!has(f.requestRedirect))): true":
        lambda s: (not _has(s, "filters") or all(not _has(f, "requestRedirect") for f in s["filters"]))
        if len(s.get("backendRefs") or []) > 0 else True,
    "self.type in ['Exact','PathPrefix'] || self.type == 'RegularExpression'":
        lambda s: s.get("type") in ("Exact", "PathPrefix", "RegularExpression"),
    "!(self.exists(f, f.type == 'RequestRedirect') && self.exists(f, f.type == 'URLRewrite'))":
        lambda s: not (any(f.get("type") == "RequestRedirect" for f in s) and any(f.get("type") == "URLRewrite" for f in s)),
    # 16 rules of at most 128 matches in all
    " + ".join(f"(self.size() > {i} ? self[{i}].matches.size() : 0)" for i in range(16)) + " <= 128":
        lambda s: sum(len(rule.get("matches") or []) for rule in s[:16]) <= 128,
    # Gateway listeners
    "self.all(l1, self.exists_one(l2, l1.name == l2.name))":
        lambda s: all(sum(1 for l2 in s if l2.get("name") == l1.get("name")) == 1 for l1 in s),
    "self.all(l, l.protocol in ['HTTP', 'TCP', 'UDP'] ? !has(l.tls) : true)":
        lambda s: all(not _has(l, "tls") for l in s if l.get("protocol") in ("HTTP", "TCP", "UDP")),
    "self.all(l, l.protocol in ['TCP', 'UDP']  ? (!has(l.hostname) || l.hostname == '') : true)":
        lambda s: all(l.get("hostname", "") == "" for l in s if l.get("protocol") in ("TCP", "UDP")),
    "self.all(l, (l.protocol == 'TLS' ? has(l.tls) && has(l.tls.mode) && l.tls.mode != '' : true))":
        lambda s: all(_has(l, "tls") and l["tls"].get("mode", "") != "" for l in s if l.get("protocol") == "TLS"),
    "self.all(l, (l.protocol == 'HTTPS' && has(l.tls)) ? (l.tls.mode == '' || l.tls.mode == 'Terminate') : true)":
        lambda s: all(l["tls"].get("mode", "") in ("", "Terminate") for l in s
                      if l.get("protocol") == "HTTPS" and _has(l, "tls")),
    "self.all(l1, self.exists_one(l2, l1.port == l2.port && l1.protocol == l2.protocol && (has(l1.hostname) && "
    "has(l2.hostname) ? l1.hostname == l2.hostname : !has(l1.hostname) && !has(l2.hostname))))":
        lambda s: all(sum(1 for l2 in s if (l1.get("port"), l1.get("protocol"), l1.get("hostname"))
                          == (l2.get("port"), l2.get("protocol"), l2.get("hostname"))) == 1 for l1 in s),
    # HTTPRoute parentRefs: no two refs to the same parent and section.
    "self.all(p1, self.exists_one(p2, p1.group == p2.group && p1.kind == p2.kind && p1.name == p2.name && "
    "(((!has(p1.__namespace__) || p1.__namespace__ == '') && (!has(p2.__namespace__) || p2.__namespace__ == '')) || "
    "(has(p1.__namespace__) && has(p2.__namespace__) && p1.__namespace__ == p2.__namespace__ )) && "
    "(((!has(p1.sectionName) || p1.sectionName == '') && (!has(p2.sectionName) || p2.sectionName == '')) || "
    "(has(p1.sectionName) && has(p2.sectionName) && p1.sectionName == p2.sectionName))))":
        lambda s: all(sum(1 for p2 in s if _parent_key(p1) == _parent_key(p2)) == 1 for p1 in s),
    # Backend endpoints all FQDN or none.
    "self.all(f, has(f.fqdn)) || !self.exists(f, has(f.fqdn))":
        lambda s: all(_has(e, "fqdn") for e in s) or not any(_has(e, "fqdn") for e in s),
    # Policies whose optional parts are unused here.
    "!has(self.compression) || !has(self.compressor)": lambda s: not (_has(s, "compression") and _has(s, "compressor")),
    "!has(self.requestBuffer) || !has(self.httpUpgrade) || self.httpUpgrade.size() == 0":
        lambda s: not _has(s, "requestBuffer") or len(s.get("httpUpgrade") or []) == 0,
    "!(has(self.mergeGateways) && self.mergeGateways && has(self.mergeBackends))":
        lambda s: not (s.get("mergeGateways") and _has(s, "mergeBackends")),
    # EnvoyProxy provider
    "!has(self.image) || !has(self.imageRepository)": lambda s: not (_has(s, "image") and _has(s, "imageRepository")),
    "((has(self.envoyDeployment) && !has(self.envoyDaemonSet)) || (!has(self.envoyDeployment) && "
    "has(self.envoyDaemonSet))) || (!has(self.envoyDeployment) && !has(self.envoyDaemonSet))":
        lambda s: not (_has(s, "envoyDeployment") and _has(s, "envoyDaemonSet")),
    "((has(self.envoyHpa) && !has(self.envoyDaemonSet)) || (!has(self.envoyHpa) && has(self.envoyDaemonSet))) || "
    "(!has(self.envoyHpa) && !has(self.envoyDaemonSet))":
        lambda s: not (_has(s, "envoyHpa") and _has(s, "envoyDaemonSet")),
    "(size(self.group) == 0 && self.kind == 'Service') ? has(self.port) : true":
        lambda s: _has(s, "port") if (s.get("group", "") == "" and s.get("kind", "Service") == "Service") else True,
}


# Families of rules that differ only in a field or type name: (pattern of the
# rule text, function of the match groups returning the check).
CEL_RULE_FAMILIES: list[tuple[re.Pattern, Callable[..., Callable[[Any], bool]]]] = [
    # HTTPRoute filters: "type T needs field X" and "field X needs type T".
    (re.compile(r"^!\(!has\(self\.(\w+)\) && self\.type == '(\w+)'\)$"),
     lambda field_name, type_name: lambda s: not (not _has(s, field_name) and s.get("type") == type_name)),
    (re.compile(r"^!\(has\(self\.(\w+)\) && self\.type != '(\w+)'\)$"),
     lambda field_name, type_name: lambda s: not (_has(s, field_name) and s.get("type") != type_name)),
    # HTTPRoute filters: each of these types at most once.
    (re.compile(r"^self\.filter\(f, f\.type == '(\w+)'\)\.size\(\) <= 1$"),
     lambda type_name: lambda s: sum(1 for f in s if f.get("type") == type_name) <= 1),
    # HTTPRoute path matches.
    (re.compile(r"^\(self\.type in \['Exact','PathPrefix'\]\) \? !self\.value\.contains\('([^']+)'\) : true$"),
     lambda bad: lambda s: bad not in s.get("value", "") if s.get("type") in ("Exact", "PathPrefix") else True),
    (re.compile(r"^\(self\.type in \['Exact','PathPrefix'\]\) \? !self\.value\.endsWith\('([^']+)'\) : true$"),
     lambda bad: lambda s: not s.get("value", "").endswith(bad) if s.get("type") in ("Exact", "PathPrefix") else True),
    (re.compile(r"^\(self\.type in \['Exact','PathPrefix'\]\) \? self\.value\.startsWith\('([^']+)'\) : true$"),
     lambda good: lambda s: s.get("value", "").startswith(good) if s.get("type") in ("Exact", "PathPrefix") else True),
    (re.compile(r"^\(self\.type in \['Exact','PathPrefix'\]\) \? self\.value\.matches\(r\"\"\"(.+)\"\"\"\) : true$"),
     lambda regex: lambda s: re.search(regex, s.get("value", "")) is not None
     if s.get("type") in ("Exact", "PathPrefix") else True),
]


def cel_check(text: str) -> Callable[[Any], bool] | None:
    """The Python version of a CEL rule, if there is one."""
    if text in CEL_RULES:
        return CEL_RULES[text]
    for pattern, make in CEL_RULE_FAMILIES:
        match = pattern.match(text)
        if match:
            return make(*match.groups())
    return None


def _parent_key(ref: dict) -> tuple:
    return (ref.get("group"), ref.get("kind"), ref.get("name"), ref.get("namespace") or "", ref.get("sectionName") or "")


def _duration(text: str) -> float:
    total = 0.0
    for amount, unit in re.findall(r"(\d+)(h|ms|m|s)", text):
        total += int(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total


# --- validation -----------------------------------------------------------------


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    cel_evaluated: set[str] = field(default_factory=set)
    cel_not_evaluated: set[str] = field(default_factory=set)


def walk_extensions(schema: dict, value: Any, path: str, report: Report) -> None:
    """What the apiserver checks beyond the JSON Schema keywords: list types and
    map keys (duplicates are refused) and the CEL rules re-implemented above."""
    for rule in schema.get("x-kubernetes-validations") or []:
        text = rule["rule"]
        check = cel_check(text)
        if check is None or "oldSelf" in text:
            report.cel_not_evaluated.add(text)
            continue
        report.cel_evaluated.add(text)
        try:
            ok = check(value)
        except (KeyError, TypeError, AttributeError) as e:
            ok = False
            text = f"{text} ({type(e).__name__}: {e})"
        if not ok:
            report.errors.append(f"{path or '<root>'}: {rule.get('message', text)} [CEL: {text}]")
    if isinstance(value, list):
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "set":
            seen = [json.dumps(v, sort_keys=True) for v in value]
            if len(seen) != len(set(seen)):
                report.errors.append(f"{path}: duplicate entries in a list of type set")
        elif list_type == "map":
            keys = schema.get("x-kubernetes-list-map-keys") or []
            seen_keys = [tuple(json.dumps(item.get(k)) for k in keys) for item in value if isinstance(item, dict)]
            if len(seen_keys) != len(set(seen_keys)):
                report.errors.append(f"{path}: duplicate entries for map keys {keys}")
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                walk_extensions(items, item, f"{path}[{i}]", report)
    elif isinstance(value, dict):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for name, sub in value.items():
            if name in properties:
                walk_extensions(properties[name], sub, f"{path}.{name}" if path else name, report)
            elif isinstance(additional, dict):
                walk_extensions(additional, sub, f"{path}.{name}" if path else name, report)


def format_error(error: jsonschema.ValidationError) -> str:
    location = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    return f"{location or '<root>'}: {error.message}"


def validate_document(document: dict, schemas: Schemas, report: Report | None = None) -> Report:
    report = report if report is not None else Report()
    api_version = document.get("apiVersion")
    kind_name = document.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind_name, str):
        report.errors.append("<root>: not a Kubernetes object (no apiVersion and kind)")
        return report
    group, _, version = api_version.rpartition("/")
    metadata = document.get("metadata") or {}
    name = metadata.get("name")
    if not isinstance(name, str) or not DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
        report.errors.append(f"metadata.name: {name!r} is not a DNS-1123 subdomain")

    kind = schemas.crds.get((group, version, kind_name))
    if kind is None:
        if group in (GATEWAY_API_GROUP, ENVOY_GATEWAY_GROUP) or "." in group:
            served = sorted(f"{g}/{v} {k}" for g, v, k in schemas.crds if k == kind_name or g == group)
            report.errors.append(f"<root>: no CRD in {CRD_DIR} serves {api_version} {kind_name} "
                                 f"(served there: {', '.join(served) or 'none'})")
            return report
        validate_core_kind(document, schemas, report)
        return report

    namespace = metadata.get("namespace")
    if kind.namespaced and not namespace:
        report.errors.append(f"metadata.namespace: {kind_name} is namespaced; set the namespace explicitly")
    if not kind.namespaced and namespace is not None:
        report.errors.append(f"metadata.namespace: {kind_name} is cluster-scoped and takes no namespace")
    if namespace is not None and not DNS1123_LABEL.match(str(namespace)):
        report.errors.append(f"metadata.namespace: {namespace!r} is not a DNS-1123 label")
    for error in sorted(schemas.validator(kind).iter_errors(document), key=lambda e: list(e.absolute_path)):
        report.errors.append(format_error(error))
    walk_extensions(kind.schema, document, "", report)
    return report


# The OpenAPI schemas do not say whether a kind is namespaced.
CORE_NAMESPACED = {"Service": True, "Namespace": False, "ConfigMap": True, "Secret": True, "Deployment": True,
                   "PersistentVolumeClaim": True}


def validate_core_kind(document: dict, schemas: Schemas, report: Report) -> None:
    """Built-in Kubernetes kinds against the Kubernetes OpenAPI schema (strict:
    unknown fields are errors), as packaged by kubernetes-validate."""
    path = kubernetes_schema_path(document["apiVersion"], document["kind"])
    if not path.exists():
        report.errors.append(f"<root>: no schema for {document['apiVersion']} {document['kind']} "
                             f"(neither a CRD in {CRD_DIR} nor a Kubernetes {KUBERNETES_VERSION} kind)")
        return
    namespaced = CORE_NAMESPACED.get(document["kind"])
    if namespaced is None:
        report.errors.append(f"<root>: whether {document['kind']} is namespaced is not known here (CORE_NAMESPACED)")
    namespace = (document.get("metadata") or {}).get("namespace")
    if namespaced is True and not namespace:
        report.errors.append(f"metadata.namespace: {document['kind']} is namespaced; set the namespace explicitly")
    if namespaced is False and namespace is not None:
        report.errors.append(f"metadata.namespace: {document['kind']} is cluster-scoped and takes no namespace")
    validator = jsonschema.Draft202012Validator(json.loads(path.read_text()), registry=schemas.registry,
                                                format_checker=FORMATS)
    for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path)):
        report.errors.append(format_error(error))


def validate_all(documents: list[Document], schemas: Schemas) -> dict[str, list[str]]:
    failures = {}
    for document in documents:
        report = validate_document(document.body, schemas)
        if report.errors:
            failures[document.where] = report.errors
    return failures


@pytest.fixture(scope="module")
def documents() -> list[Document]:
    return load_documents()


def find(documents: list[Document], kind: str, name: str | None = None) -> list[dict]:
    return [d.body for d in documents
            if d.body.get("kind") == kind and (name is None or d.body["metadata"]["name"] == name)]


def one(documents: list[Document], kind: str, name: str | None = None) -> dict:
    found = find(documents, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''} in gateway-api/, found {len(found)}"
    return found[0]


# --- 1. the manifests are valid ---------------------------------------------------


def test_every_manifest_validates_against_its_real_schema(documents, schemas):
    assert documents, "no manifests under gateway-api/"
    failures = validate_all(documents, schemas)
    assert not failures, "invalid manifests:\n" + "\n".join(
        f"{where}:\n  " + "\n  ".join(errors) for where, errors in failures.items())
    kinds = {d.body["kind"] for d in documents}
    assert kinds >= {"Namespace", "GatewayClass", "Gateway", "EnvoyProxy", "Service", "Backend", "HTTPRoute",
                     "BackendTrafficPolicy", "EnvoyExtensionPolicy", "EnvoyPatchPolicy", "ConfigMap", "Deployment",
                     "PersistentVolumeClaim"}, kinds


def test_every_document_is_a_kubernetes_object_with_a_schema(documents, schemas):
    """Nothing under gateway-api/ escapes validation: each document names a kind
    that a vendored CRD or the Kubernetes schema describes."""
    for document in documents:
        body = document.body
        group, _, version = body["apiVersion"].rpartition("/")
        assert (group, version, body["kind"]) in schemas.crds \
            or kubernetes_schema_path(body["apiVersion"], body["kind"]).exists(), document.where


def test_envoy_gateway_enables_the_extension_apis_the_manifests_use(documents):
    values = yaml.safe_load(HELM_VALUES.read_text())
    extension_apis = values["config"]["envoyGateway"]["extensionApis"]
    assert set(extension_apis) <= {"enableBackend", "enableEnvoyPatchPolicy", "enableEnvoyExtensionPolicy"}, \
        f"unknown extensionApis keys in {HELM_VALUES}: {extension_apis}"
    if find(documents, "Backend"):
        assert extension_apis.get("enableBackend") is True, "Backend resources need extensionApis.enableBackend"
    if find(documents, "EnvoyPatchPolicy"):
        assert extension_apis.get("enableEnvoyPatchPolicy") is True, \
            "EnvoyPatchPolicy needs extensionApis.enableEnvoyPatchPolicy"


def test_every_reimplemented_cel_rule_exists_in_the_crds(schemas):
    rules: set[str] = set()

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            for rule in node.get("x-kubernetes-validations") or []:
                rules.add(rule["rule"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    for kind in schemas.crds.values():
        collect(kind.schema)
    stale = [text for text in CEL_RULES if text not in rules]
    assert not stale, f"re-implemented CEL rules no longer in the CRDs: {stale}"
    for pattern, _ in CEL_RULE_FAMILIES:
        assert any(pattern.match(text) for text in rules), f"no CRD rule matches {pattern.pattern}"


def test_the_cel_rules_the_manifests_reach_are_mostly_evaluated(documents, schemas):
    report = Report()
    for document in documents:
        validate_document(document.body, schemas, report)
    assert not report.errors
    evaluated, skipped = len(report.cel_evaluated), len(report.cel_not_evaluated - report.cel_evaluated)
    # Those left are about fields these manifests do not set (mergeType,
    # admissionControl, preconnect, ReplacePrefixMatch rewrites, TLS versions,
    # autoSNIFromEndpointHostname) and one transition rule (oldSelf).
    assert evaluated >= 60 and skipped <= 15, (evaluated, sorted(report.cel_not_evaluated))


# --- 2. the validator catches mistakes ------------------------------------------


def errors_after(documents: list[Document], schemas: Schemas, kind: str, name: str | None,
                 mutate: Callable[[dict], None]) -> list[str]:
    body = copy.deepcopy(one(documents, kind, name))
    mutate(body)
    return validate_document(body, schemas).errors


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def mutate(body: dict) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return mutate


def _delete(path: str) -> Callable[[dict], None]:
    def mutate(body: dict) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]
    return mutate


def _rename(path: str, new_name: str) -> Callable[[dict], None]:
    def mutate(body: dict) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[new_name] = node.pop(last)
    return mutate


def _duplicate_listener(body: dict) -> None:
    body["spec"]["listeners"].append(copy.deepcopy(body["spec"]["listeners"][0]))


def _ip_and_fqdn(body: dict) -> None:
    body["spec"]["endpoints"][0]["ip"] = {"address": "10.0.0.1", "port": 443}


def _target_ref_and_refs(body: dict) -> None:
    body["spec"]["targetRef"] = copy.deepcopy(body["spec"]["targetRefs"][0])


MUTATIONS = [
    # wrong field names (the apiserver would prune them silently)
    ("HTTPRoute", "tollgate", _rename("spec.rules.0.backendRefs", "backendRef"),
     "Additional properties are not allowed ('backendRef' was unexpected)"),
    ("BackendTrafficPolicy", "tollgate-health-checked", _rename("spec.healthCheck.active.interval", "intervalSeconds"),
     "'intervalSeconds' was unexpected"),
    ("EnvoyExtensionPolicy", "tollgate-filters", _rename("spec.wasm.0.rootID", "rootId"), "'rootId' was unexpected"),
    ("Service", "vllm-8b", _rename("spec.selector", "selectors"), "'selectors' was unexpected"),
    ("Deployment", "tollgate-ratelimit", _rename("spec.template.spec.containers.0.readinessProbe", "readinessprobe"),
     "'readinessprobe' was unexpected"),
    ("Gateway", "tollgate", _set("metadata.labelz", {"a": "b"}), "'labelz' was unexpected"),
    # wrong types and values
    ("HTTPRoute", "tollgate", _set("spec.rules.6.backendRefs.0.weight", "90"), "'90' is not of type 'integer'"),
    ("BackendTrafficPolicy", "tollgate-health-checked", _set("spec.retry.numRetries", "two"),
     "'two' is not of type 'integer'"),
    ("BackendTrafficPolicy", "tollgate-health-checked", _set("spec.retry.retryOn.httpStatusCodes", [429, 700]),
     "700 is greater than the maximum of 599"),
    ("BackendTrafficPolicy", "tollgate-health-checked", _set("spec.healthCheck.active.interval", "30 seconds"),
     "does not match"),
    ("EnvoyExtensionPolicy", "tollgate-filters", _set("spec.wasm.0.code.type", "Http"), "is not one of"),
    ("EnvoyPatchPolicy", "tollgate-router", _set("spec.jsonPatches.0.type", "type.googleapis.com/Listener"),
     "is not one of"),
    ("EnvoyPatchPolicy", "tollgate-router", _set("spec.priority", 2**40), "is not a 'int32'"),
    ("Gateway", "tollgate", _set("spec.listeners.0.port", 70000), "70000 is greater than the maximum of 65535"),
    ("Service", "vllm-8b", _set("spec.ports.0.port", "http"), "'http' is not of type 'integer'"),
    ("Deployment", "tollgate-ratelimit", _set("spec.replicas", "2"), "'2' is not of type 'integer'"),
    ("ConfigMap", "tollgate-ratelimit-config", _set("data", {"ai-gateway.yaml": {"domain": "ai-gateway"}}),
     "is not of type 'string'"),
    ("PersistentVolumeClaim", "tollgate-ratelimit-redis", _set("spec.accessModes", "ReadWriteOnce"),
     "is not of type 'array'"),
    ("Gateway", "tollgate", _set("metadata.name", "Tollgate"), "is not a DNS-1123 subdomain"),
    # missing required fields
    ("Gateway", "tollgate", _delete("spec.listeners"), "'listeners' is a required property"),
    ("HTTPRoute", "tollgate", _delete("spec.parentRefs.0.name"), "'name' is a required property"),
    ("EnvoyPatchPolicy", "tollgate-router", _delete("spec.jsonPatches.0.name"), "'name' is a required property"),
    ("Deployment", "tollgate-ratelimit", _delete("spec.selector"), "'selector' is a required property"),
    ("Gateway", "tollgate", _delete("metadata.namespace"), "Gateway is namespaced"),
    ("Deployment", "tollgate-ratelimit", _delete("metadata.namespace"), "Deployment is namespaced"),
    ("GatewayClass", "tollgate", _set("metadata.namespace", "tollgate"), "GatewayClass is cluster-scoped"),
    # apiVersion not served by the vendored CRDs
    ("Backend", "openai", _set("apiVersion", "gateway.envoyproxy.io/v1alpha2"), "no CRD in"),
    # CEL rules re-implemented
    ("EnvoyExtensionPolicy", "tollgate-filters", _delete("spec.wasm.0.code.http"),
     "If type is HTTP, http field needs to be set."),
    ("BackendTrafficPolicy", "tollgate-health-checked", _delete("spec.healthCheck.active.http"),
     "If Health Checker type is HTTP, http field needs to be set."),
    ("BackendTrafficPolicy", "tollgate-providers", _target_ref_and_refs, "either targetRef or targetRefs must be used"),
    ("Backend", "openai", _ip_and_fqdn, "only one of fqdn, ip or unix can be specified"),
    ("Gateway", "tollgate", _duplicate_listener, "duplicate entries for map keys ['name']"),
    ("HTTPRoute", "tollgate", _set("spec.rules.0.matches.0.path.value", "v1/chat"),
     "value must be an absolute path and start with '/'"),
]


@pytest.mark.parametrize("kind,name,mutate,expected", MUTATIONS,
                         ids=[f"{m[0]}-{m[3][:40]}" for m in MUTATIONS])
def test_a_broken_manifest_is_refused(documents, schemas, kind, name, mutate, expected):
    errors = errors_after(documents, schemas, kind, name, mutate)
    assert any(expected in e for e in errors), f"expected an error containing {expected!r}, got {errors}"


def test_free_form_fields_stay_free(documents, schemas):
    """`wasm[].config` and EnvoyPatchPolicy values are
    x-kubernetes-preserve-unknown-fields: any JSON passes the schema."""
    def mutate(body: dict) -> None:
        body["spec"]["wasm"][1]["config"] = {"anything": [1, {"nested": None}], "prices": {"gpt-4": 0.01}}
    assert errors_after(documents, schemas, "EnvoyExtensionPolicy", "tollgate-filters", mutate) == []


# --- 3. the manifests route as the local gateway ------------------------------------
#
# The local gateway's Envoy configuration (envoy/local.json, rendered from
# examples/tollgate.yaml and checked against it by `make test-envoy-configs`)
# is the reference: the manifests must make Envoy Gateway generate the same
# routing.


def local_bootstrap() -> dict:
    return json.loads(LOCAL_BOOTSTRAP.read_text())


def local_hcm() -> dict:
    return local_bootstrap()["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def local_vhost() -> dict:
    return local_hcm()["route_config"]["virtual_hosts"][0]


def local_clusters() -> dict[str, dict]:
    return {c["name"]: c for c in local_bootstrap()["static_resources"]["clusters"]}


def local_chain(cluster: dict) -> list[str]:
    """The backends a local cluster tries, in priority order."""
    chain = []
    for locality in sorted(cluster["load_assignment"]["endpoints"], key=lambda e: e.get("priority", 0)):
        for endpoint in locality["lb_endpoints"]:
            chain.append(endpoint["metadata"]["filter_metadata"]["tollgate"]["backend"])
    return chain


def local_routes() -> list[tuple]:
    """envoy/local.json's routes as (header matches, [(cluster, weight)], timeout seconds)."""
    routes = []
    for route in local_vhost()["routes"]:
        assert route["match"].get("prefix") == "/", route
        headers = tuple((h["name"], h["string_match"]["exact"]) for h in route["match"].get("headers") or [])
        action = route["route"]
        if "weighted_clusters" in action:
            targets = [(c["name"], c["weight"]) for c in action["weighted_clusters"]["clusters"]]
        else:
            targets = [(action["cluster"], 1)]
        routes.append((headers, targets, _duration(action["timeout"])))
    return routes


def httproute_rules(documents: list[Document]) -> tuple[dict, list[tuple]]:
    """The HTTPRoute's rules as (header matches, [(backend, weight)], timeout seconds)."""
    route = one(documents, "HTTPRoute")
    services = {s["metadata"]["name"] for s in find(documents, "Service")}
    backends = {b["metadata"]["name"] for b in find(documents, "Backend")}
    rules = []
    for i, rule in enumerate(route["spec"]["rules"]):
        matches = rule.get("matches") or []
        assert len(matches) == 1, f"rule/{i}: one match per rule expected"
        match = matches[0]
        assert match.get("path") == {"type": "PathPrefix", "value": "/"}, f"rule/{i}: {match}"
        headers = match.get("headers") or []
        assert all(h.get("type", "Exact") == "Exact" for h in headers), f"rule/{i}"
        targets = []
        for ref in rule["backendRefs"]:
            kind = ref.get("kind", "Service")
            assert ref["name"] in (services if kind == "Service" else backends), \
                f"rule/{i}: {kind} {ref['name']} is not defined in gateway-api/"
            targets.append((ref["name"], ref.get("weight", 1)))
        rules.append((tuple((h["name"], h["value"]) for h in headers), targets, _duration(rule["timeouts"]["request"])))
    return route, rules


def test_generated_manifests_are_up_to_date():
    result = subprocess.run([sys.executable, str(MANIFESTS / "generate.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_routes_match_the_local_gateway(documents):
    clusters = local_clusters()
    expected = []
    for headers, targets, timeout in local_routes():
        # A local (model, backend) cluster tries its backend first: that is the
        # rule's backend here (the rest of its chain: see the xfail below).
        expected.append((headers, [(local_chain(clusters[name])[0], weight) for name, weight in targets], timeout))
    _, rules = httproute_rules(documents)
    assert rules == expected


def test_routes_cover_the_gateway_configuration(documents):
    """Cross-check with examples/tollgate.yaml itself: every (model, backend)
    pair, every tier, the default split, and the same backends."""
    config = yaml.safe_load(TOLLGATE_CONFIG.read_text())
    _, rules = httproute_rules(documents)
    by_headers = {headers: targets for headers, targets, _ in rules}
    for model, group in (config.get("models") or {}).items():
        for target in group["targets"]:
            key = (("x-ai-model", model), ("x-ai-backend", target["backend"]))
            assert by_headers.get(key) == [(target["backend"], 1)], f"no rule for {model} on {target['backend']}"
    for tier in config.get("tiers") or {}:
        assert (("x-model-tier", tier),) in by_headers, f"no rule for tier {tier}"
    assert by_headers[()] == [(w["backend"], w["weight"]) for w in config["default_route"]]
    # Services in front of pods that these manifests run (the rate-limit
    # service, its Redis) are Tollgate's own, not backends.
    names = {s["metadata"]["name"] for s in find(documents, "Service") if not selected_deployments(documents, s)} | \
        {b["metadata"]["name"] for b in find(documents, "Backend")}
    assert names == {b["name"] for b in config["backends"]}


ROUTE_BY_CLUSTER = r"\$\.virtual_hosts\[\*\]\.routes\[\?\(@\.route\.cluster == '([^']+)'\)\]\.route"


def fallback_chains(documents: list[Document]) -> dict[int, list[str]]:
    """Rule index → the backends its route falls back along: the aggregate
    cluster the patch points it at, its children mapped to the one backend of
    the rule each child cluster is; a rule without an aggregate, its own."""
    route, rules = httproute_rules(documents)
    patches = one(documents, "EnvoyPatchPolicy")["spec"]["jsonPatches"]
    aggregates = {p["operation"]["value"]["name"]: p["operation"]["value"] for p in patches
                  if adds_resource(p) and "cluster_type" in p["operation"]["value"]}
    prefix = f"httproute/{route['metadata']['namespace']}/{route['metadata']['name']}/rule/"

    def backend_of(cluster: str) -> str:
        targets = rules[int(cluster.removeprefix(prefix))][1]
        assert cluster.startswith(prefix) and len(targets) == 1, f"{cluster} is not one backend's rule"
        return targets[0][0]

    chains = {i: [targets[0][0]] for i, (_, targets, _) in enumerate(rules) if len(targets) == 1}
    for p in patches:
        if p["type"].endswith("RouteConfiguration") and p["operation"]["op"] == "replace":
            rule_cluster = re.fullmatch(ROUTE_BY_CLUSTER, p["operation"]["jsonPath"]).group(1)
            aggregate = aggregates[p["operation"]["value"]]
            assert aggregate["cluster_type"]["name"] == "envoy.clusters.aggregate"
            children = aggregate["cluster_type"]["typed_config"]["clusters"]
            assert children[0] == rule_cluster, "a chain starts with the rule's own backend"
            chains[int(rule_cluster.removeprefix(prefix))] = [backend_of(c) for c in children]
    return chains


def test_fallback_chains_match_the_local_gateway(documents):
    clusters = local_clusters()
    _, rules = httproute_rules(documents)
    chains = fallback_chains(documents)
    fallbacks = 0
    for i, ((headers, targets, _), (_, local_targets, _)) in enumerate(zip(rules, local_routes())):
        if len(targets) == 1:
            assert chains[i] == local_chain(clusters[local_targets[0][0]]), f"{headers}: chain differs"
            fallbacks += len(chains[i]) > 1
    assert fallbacks >= 2, "the example's llama-70b rules fall back"


def test_fallback_aggregates_carry_the_per_attempt_filter(documents):
    """In an aggregate, a try runs the route's cluster's upstream filters (the
    aggregate's), not the child's: see the real-Envoy test below."""
    patches = one(documents, "EnvoyPatchPolicy")["spec"]["jsonPatches"]
    rule_filters = next(p["operation"]["value"] for p in patches
                        if p["type"].endswith("cluster.v3.Cluster") and p["operation"]["path"].endswith("/http_filters"))
    aggregates = [p["operation"]["value"] for p in patches if adds_resource(p) and "cluster_type" in p["operation"]["value"]]
    assert aggregates
    for aggregate in aggregates:
        options = aggregate["typed_extension_protocol_options"][EXTENSION_OPTIONS_KEY]
        assert options["http_filters"] == rule_filters, aggregate["name"]


def rule_policies(documents: list[Document]) -> dict[str, dict]:
    route = one(documents, "HTTPRoute")
    covered: dict[str, dict] = {}
    for policy in find(documents, "BackendTrafficPolicy"):
        for ref in policy["spec"]["targetRefs"]:
            assert (ref["kind"], ref["name"]) == ("HTTPRoute", route["metadata"]["name"])
            assert ref["sectionName"] not in covered, f"rule {ref['sectionName']} has two policies"
            covered[ref["sectionName"]] = policy
    assert sorted(covered) == sorted(r["name"] for r in route["spec"]["rules"]), \
        "each HTTPRoute rule needs exactly one BackendTrafficPolicy"
    return covered


def test_retries_and_health_checks_match_the_local_gateway(documents):
    route, _ = httproute_rules(documents)
    policies = rule_policies(documents)
    local_retry = local_vhost()["retry_policy"]
    clusters = local_clusters()
    for rule, (_, local_targets, _) in zip(route["spec"]["rules"], local_routes()):
        spec = policies[rule["name"]]["spec"]
        retry = spec["retry"]
        assert retry["numRetries"] == local_retry["num_retries"]
        assert retry["retryOn"]["httpStatusCodes"] == local_retry["retriable_status_codes"]
        assert set(retry["retryOn"]["triggers"]) == set(local_retry["retry_on"].split(","))
        priority = local_retry.get("retry_priority")
        if priority:
            assert priority["name"] == "envoy.retry_priorities.previous_priorities"
            assert retry.get("numAttemptsPerPriority") == priority["typed_config"]["update_frequency"]
        health = spec.get("healthCheck") or {}
        for cluster_name, _ in local_targets:
            cluster = clusters[cluster_name]
            checks = cluster.get("health_checks") or []
            active = health.get("active")
            if checks:
                check = checks[0]
                assert active, f"rule {rule['name']}: the local cluster {cluster_name} is actively checked"
                assert _duration(active["interval"]) == _duration(check["interval"])
                assert _duration(active["timeout"]) == _duration(check["timeout"])
                assert active["unhealthyThreshold"] == check["unhealthy_threshold"]
                assert active["healthyThreshold"] == check["healthy_threshold"]
                assert active["type"] == "HTTP" and "http_health_check" in check
            else:
                assert active is None, f"rule {rule['name']}: {cluster_name} has no active checks locally"
            outlier = cluster.get("outlier_detection")
            passive = health.get("passive")
            assert bool(outlier) == bool(passive), f"rule {rule['name']}: passive checks differ"
            if outlier:
                assert passive["consecutive5XxErrors"] == outlier["consecutive_5xx"]
                assert _duration(passive["interval"]) == _duration(outlier["interval"])
                assert _duration(passive["baseEjectionTime"]) == _duration(outlier["base_ejection_time"])
                assert passive["maxEjectionPercent"] == outlier["max_ejection_percent"]


def local_wasm_filters() -> dict[str, dict]:
    return {f["typed_config"]["config"]["root_id"]: f["typed_config"]["config"]
            for f in local_hcm()["http_filters"] if f["name"] != "envoy.filters.http.router"}


def router_upstream_root_id() -> str:
    match = re.search(r'pub const ROOT_ID_UPSTREAM: &str = "([^"]+)";', ROUTER_SOURCE.read_text())
    assert match, f"ROOT_ID_UPSTREAM not found in {ROUTER_SOURCE}"
    return match.group(1)


def kubernetes_authorities(documents: list[Document]) -> dict[str, str]:
    """host[:port] of each backend as the router should address it in the cluster."""
    authorities = {}
    for service in find(documents, "Service"):
        meta = service["metadata"]
        port = service["spec"]["ports"][0]["port"]
        authorities[meta["name"]] = f"{meta['name']}.{meta['namespace']}.svc.cluster.local:{port}"
    for backend in find(documents, "Backend"):
        fqdn = backend["spec"]["endpoints"][0]["fqdn"]
        default_port = 443 if backend["spec"].get("tls") else 80
        authorities[backend["metadata"]["name"]] = \
            fqdn["hostname"] if fqdn["port"] == default_port else f"{fqdn['hostname']}:{fqdn['port']}"
    return authorities


def test_filters_and_their_configuration_match_the_local_gateway(documents):
    config = yaml.safe_load(TOLLGATE_CONFIG.read_text())
    extension = one(documents, "EnvoyExtensionPolicy")
    wasm = extension["spec"]["wasm"]
    local = local_wasm_filters()
    assert [w["rootID"] for w in wasm] == list(local), "other filters, or another order, than the local gateway"
    assert [w["rootID"] for w in wasm] == [f"tollgate.{n}" for n in ("router", "meter", "guard")
                                          if n in (config.get("filters") or {})]
    authorities = kubernetes_authorities(documents)
    proxy = one(documents, "EnvoyProxy")
    container_env = {e["name"]: e for e in proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]["env"]}
    for entry in wasm:
        name = entry["rootID"].removeprefix("tollgate.")
        local_config = json.loads(local[entry["rootID"]]["configuration"]["value"])
        ours = copy.deepcopy(entry.get("config", {}))
        assert entry.get("failOpen", False) == local[entry["rootID"]]["fail_open"]
        assert entry["code"]["type"] == "HTTP"
        assert entry["code"]["http"]["url"].endswith(f"/tollgate_{name}_wasm.wasm")
        assert entry["code"]["http"]["sha256"] == f"${{TOLLGATE_{name.upper()}_WASM_SHA256}}"
        if name != "router":
            assert ours == local_config, f"{name}: configuration differs from the local gateway's"
            continue
        # The router's own configuration is the local one, but for where the
        # backends are and which variables hold their keys.
        keys = []
        for backend, settings in ours["backends"].items():
            assert settings.pop("authority") == authorities[backend], f"router: {backend}'s authority"
            variable = settings.pop("api_key_env", None)
            if variable:
                keys.append(variable)
                assert container_env[variable]["valueFrom"]["secretKeyRef"]["key"] == variable
            local_settings = local_config["backends"][backend]
            local_settings.pop("authority", None)
            local_variable = local_settings.pop("api_key_env", None)
            assert local_variable in (None, variable), f"router: {backend}'s key variable"
        assert ours == local_config, "router: configuration differs from the local gateway's"
        assert sorted(entry["env"]["hostKeys"]) == sorted(keys)


def wasm_filter_name(policy: dict, index: int) -> str:
    meta = policy["metadata"]
    return f"envoy.filters.http.wasm/envoyextensionpolicy/{meta['namespace']}/{meta['name']}/wasm/{index}"


def adds_resource(patch: dict) -> bool:
    """An `add` with an empty `path` and no `jsonPath`: Envoy Gateway adds its
    value as a new resource rather than patching the one named (v1.9.0,
    internal/xds/translator/jsonpatch.go; it refuses a patch without `path`)."""
    operation = patch["operation"]
    return operation["op"] == "add" and operation.get("path") == "" and "jsonPath" not in operation


def test_the_patch_policy_matches_the_generated_names_and_the_local_gateway(documents):
    gateway = one(documents, "Gateway")
    route, _ = httproute_rules(documents)
    extension = one(documents, "EnvoyExtensionPolicy")
    proxy = one(documents, "EnvoyProxy")
    patch = one(documents, "EnvoyPatchPolicy")
    ns = gateway["metadata"]["namespace"]
    assert patch["spec"]["targetRef"] == {"group": GATEWAY_API_GROUP, "kind": "Gateway",
                                          "name": gateway["metadata"]["name"]}
    assert patch["metadata"]["namespace"] == ns
    section = route["spec"]["parentRefs"][0]["sectionName"]
    listener_name = f"{ns}/{gateway['metadata']['name']}/{section}"
    ops = patch["spec"]["jsonPatches"]

    # 1. allow_on_headers_stop_iteration on the filters that have it locally.
    router_index = [w["rootID"] for w in extension["spec"]["wasm"]].index("tollgate.router")
    router_filter = wasm_filter_name(extension, router_index)
    local_filters = local_wasm_filters()
    local_router = local_filters["tollgate.router"]
    listener_ops = [p for p in ops if p["type"].endswith("listener.v3.Listener")]
    expected_ops = []
    for i, entry in enumerate(extension["spec"]["wasm"]):
        if local_filters[entry["rootID"]].get("allow_on_headers_stop_iteration"):
            expected_ops.append((listener_name, {
                "op": "add", "jsonPath": f"$..http_filters[?(@.name == '{wasm_filter_name(extension, i)}')]",
                "path": "typed_config/config/allow_on_headers_stop_iteration", "value": True}))
    assert [(p["name"], p["operation"]) for p in listener_ops] == expected_ops
    assert local_router.get("allow_on_headers_stop_iteration"), "the router routes on the body"

    # 2. Virtual host and retry settings, as locally.
    route_ops = [p for p in ops if p["type"].endswith("route.v3.RouteConfiguration")]
    assert {p["name"] for p in route_ops} == {listener_name}
    vhost = local_vhost()
    vhost_ops = {p["operation"]["path"]: p["operation"]["value"] for p in route_ops
                 if p["operation"]["jsonPath"] == "$.virtual_hosts[*]"}
    assert vhost_ops == {key: vhost[key] for key in ("include_request_attempt_count", "include_attempt_count_in_response",
                                                     "request_headers_to_remove") if key in vhost}
    assert {"x-ai-model", "x-ai-backend", "x-ai-tier"} <= set(vhost_ops["request_headers_to_remove"]), \
        "the router's decision headers never reach a provider"
    retry_ops = {p["operation"]["path"]: p["operation"]["value"] for p in route_ops
                 if p["operation"]["jsonPath"] == "$.virtual_hosts[*].routes[*].route.retry_policy"}
    local_retry = vhost["retry_policy"]
    expressed_by_policy = {"retry_on", "retriable_status_codes", "num_retries", "retry_priority"}
    assert retry_ops == {k: v for k, v in local_retry.items() if k not in expressed_by_policy}

    # 3. One upstream-filter patch per rule's cluster, in the shape that cluster needs.
    cluster_ops = [p for p in ops if p["type"].endswith("cluster.v3.Cluster") and "jsonPath" not in p["operation"]
                   and not adds_resource(p)]
    rules = route["spec"]["rules"]
    prefix = f"httproute/{route['metadata']['namespace']}/{route['metadata']['name']}/rule/"
    assert sorted(p["name"] for p in cluster_ops) == sorted(f"{prefix}{i}" for i in range(len(rules)))
    tls_backends = {b["metadata"]["name"] for b in find(documents, "Backend") if b["spec"].get("tls")}
    router_entry = extension["spec"]["wasm"][router_index]
    bootstrap_clusters = [p["value"]["name"] for p in proxy["spec"]["bootstrap"]["jsonPatches"]
                          if p["path"] == "/static_resources/clusters/-"]
    local_upstream = next(iter(local_clusters().values()))["typed_extension_protocol_options"][
        EXTENSION_OPTIONS_KEY]["http_filters"][0]["typed_config"]["config"]
    base = f"/typed_extension_protocol_options/{EXTENSION_OPTIONS_KEY}"
    for op in cluster_ops:
        rule = rules[int(op["name"].rsplit("/", 1)[1])]
        operation = op["operation"]
        assert operation["op"] == "add"
        kinds = {"tls" if ref.get("kind") == "Backend" and ref["name"] in tls_backends else "plain"
                 for ref in rule["backendRefs"]}
        assert len(kinds) == 1, f"{op['name']} mixes TLS Backends and plain Services"
        if kinds == {"tls"}:
            # Envoy Gateway already wrote HttpProtocolOptions (auto_config): add the filters only.
            assert operation["path"] == f"{base}/http_filters"
            filters = operation["value"]
        else:
            assert operation["path"] == base
            assert operation["value"]["@type"] == f"type.googleapis.com/{EXTENSION_OPTIONS_KEY}"
            filters = operation["value"]["http_filters"]
        assert [f["name"] for f in filters] == [router_upstream_root_id(), "envoy.filters.http.upstream_codec"]
        plugin = filters[0]["typed_config"]["config"]
        assert plugin["root_id"] == router_upstream_root_id() == local_upstream["root_id"]
        assert plugin.get("allow_on_headers_stop_iteration") == local_upstream.get("allow_on_headers_stop_iteration")
        assert plugin["fail_open"] == local_upstream["fail_open"]
        # Same configuration as the router filter; the local gateway gives both halves the same one too.
        assert local_upstream["configuration"] == local_router["configuration"]
        assert json.loads(plugin["configuration"]["value"]) == router_entry["config"]
        vm = plugin["vm_config"]
        assert vm["vm_id"] == router_filter.removeprefix("envoy.filters.http.wasm/"), \
            "the per-attempt half must share the router's VM id (and so its shared data)"
        assert vm.get("environment_variables", {}).get("host_env_keys") == router_entry["env"]["hostKeys"]
        remote = vm["code"]["remote"]
        assert remote["http_uri"]["uri"] == router_entry["code"]["http"]["url"], "upstream filter loads another module"
        assert remote["sha256"] == router_entry["code"]["http"]["sha256"]
        assert remote["http_uri"]["cluster"] in bootstrap_clusters

    # 4. Each endpoint's backend in its metadata, as locally.
    providers = {b["name"]: b["provider"] for b in yaml.safe_load(TOLLGATE_CONFIG.read_text())["backends"]}
    metadata_ops = {(p["type"].rsplit(".", 1)[1], p["name"], p["operation"]["jsonPath"]): p["operation"]
                    for p in ops if p["operation"].get("path") == "metadata/filter_metadata/tollgate"}
    expected_keys = set()
    for i, rule in enumerate(rules):
        for j, ref in enumerate(rule["backendRefs"]):
            if ref["name"] in tls_backends:
                key = ("Cluster", f"{prefix}{i}", f"$.load_assignment.endpoints[{j}].lb_endpoints[*]")
            else:
                key = ("ClusterLoadAssignment", f"{prefix}{i}", f"$.endpoints[{j}].lb_endpoints[*]")
            expected_keys.add(key)
            assert key in metadata_ops, f"rule/{i}: no endpoint metadata for {ref['name']}"
            assert metadata_ops[key]["value"] == {"backend": ref["name"], "provider": providers[ref["name"]]}
    assert set(metadata_ops) == expected_keys
    local_metadata = {m["filter_metadata"]["tollgate"]["backend"]: m["filter_metadata"]["tollgate"]
                      for c in local_clusters().values() for loc in c["load_assignment"]["endpoints"]
                      for m in (e.get("metadata", {}) for e in loc["lb_endpoints"])
                      if "tollgate" in m.get("filter_metadata", {})}  # not the guard's rate-limit service
    for op in metadata_ops.values():
        assert op["value"] == local_metadata[op["value"]["backend"]]


# --- 3b. the guard's rate-limit service ---------------------------------------------
#
# The guard calls the rate-limit service through the Envoy cluster that its
# configuration names. Locally `tollgate render` writes that cluster and
# `tollgate run` starts the service; here the patch policy adds the cluster and
# 25-/26-*.yaml run the service. The checks follow the cluster's address to the
# Service, the Deployment it selects, that container's flags and its ConfigMap.


def guard_config() -> dict:
    return json.loads(local_wasm_filters()["tollgate.guard"]["configuration"]["value"])


def selected_deployments(documents: list[Document], service: dict) -> list[dict]:
    selector = service["spec"].get("selector") or {}
    return [d for d in find(documents, "Deployment")
            if selector and d["metadata"]["namespace"] == service["metadata"]["namespace"]
            and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]


def dns_name(service: dict) -> str:
    return f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"


@dataclass
class Serving:
    """What answers at a host:port in the cluster."""
    service: dict
    service_port: dict
    deployment: dict
    container: dict
    container_port: dict


def serving(documents: list[Document], host: str, port: int) -> Serving:
    name, namespace, domain = host.split(".", 2)
    assert domain == "svc.cluster.local", f"{host} is not a Service's cluster DNS name"
    service = one(documents, "Service", name)
    assert service["metadata"]["namespace"] == namespace, host
    service_ports = [p for p in service["spec"]["ports"] if p["port"] == port]
    assert len(service_ports) == 1, f"Service {name} has no port {port}"
    deployments = selected_deployments(documents, service)
    assert len(deployments) == 1, f"Service {name} selects {len(deployments)} Deployments"
    target = service_ports[0].get("targetPort", port)
    found = [(c, p) for c in deployments[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports") or []
             if target in (p["containerPort"], p.get("name"))]
    assert len(found) == 1, f"Service {name}'s port {port} targets {target}, which no one container port is"
    return Serving(service, service_ports[0], deployments[0], *found[0])


def flags(container: dict) -> dict[str, str]:
    """A container's `--name=value` arguments."""
    args = container.get("args") or []
    assert all(a.startswith("--") and "=" in a for a in args), f"{container['name']}: write flags as --name=value"
    return dict(a.removeprefix("--").split("=", 1) for a in args)


def listen_port(address: str) -> int:
    host, _, port = address.rpartition(":")
    assert host not in ("127.0.0.1", "localhost", "[::1]"), f"{address}: other pods cannot reach a loopback address"
    return int(port)


def ratelimit_cluster(documents: list[Document]) -> dict:
    added = [p for p in one(documents, "EnvoyPatchPolicy")["spec"]["jsonPatches"]
             if adds_resource(p) and p["name"] == guard_config()["cluster"]]
    assert [p["type"] for p in added] == ["type.googleapis.com/envoy.config.cluster.v3.Cluster"]
    return added[0]["operation"]["value"]


def ratelimit_serving(documents: list[Document]) -> Serving:
    endpoints = [e for locality in ratelimit_cluster(documents)["load_assignment"]["endpoints"]
                 for e in locality["lb_endpoints"]]
    assert len(endpoints) == 1
    address = endpoints[0]["endpoint"]["address"]["socket_address"]
    return serving(documents, address["address"], address["port_value"])


def test_the_guard_cluster_is_added_as_the_local_one(documents):
    guard = guard_config()
    extension = one(documents, "EnvoyExtensionPolicy")
    assert next(w for w in extension["spec"]["wasm"] if w["rootID"] == "tollgate.guard")["config"]["cluster"] \
        == guard["cluster"]
    cluster = ratelimit_cluster(documents)
    local = local_clusters()[guard["cluster"]]
    assert cluster["name"] == cluster["load_assignment"]["cluster_name"] == guard["cluster"]
    # gRPC needs HTTP/2; the connect timeout is the local one.
    assert cluster["typed_extension_protocol_options"] == local["typed_extension_protocol_options"]
    assert cluster["typed_extension_protocol_options"][EXTENSION_OPTIONS_KEY]["explicit_http_config"] == \
        {"http2_protocol_options": {}}
    assert cluster["connect_timeout"] == local["connect_timeout"]

    # A STRICT_DNS cluster on a headless Service's name reaches every ready
    # pod itself, at the cluster's port: that must be where the service listens.
    assert cluster["type"] == "STRICT_DNS"
    ratelimit = ratelimit_serving(documents)
    port = ratelimit.service_port["port"]  # the cluster's
    assert ratelimit.service["spec"].get("clusterIP") == "None"
    assert ratelimit.service_port.get("appProtocol") == "kubernetes.io/h2c"
    assert ratelimit.container_port["containerPort"] == port
    assert listen_port(flags(ratelimit.container)["grpc-listen"]) == port


def test_the_ratelimit_service_runs_replicated_on_shared_counters(documents):
    ratelimit = ratelimit_serving(documents)
    container = ratelimit.container
    assert ratelimit.deployment["spec"]["replicas"] == 2
    assert container["image"] == "${TOLLGATE_RATELIMIT_IMAGE}"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    args = flags(container)

    # /healthcheck for both probes, /metrics: the HTTP listener, which the Service exposes too.
    http_port = listen_port(args["http-listen"])
    http = serving(documents, dns_name(ratelimit.service), http_port)
    assert http.container is container and http.container_port["containerPort"] == http_port
    for probe in ("readinessProbe", "livenessProbe"):
        check = container[probe]["httpGet"]
        assert check["path"] == "/healthcheck", probe
        assert check["port"] in (http_port, http.container_port.get("name")), probe

    # Counters in one Redis, so that both replicas count every request.
    url = urlsplit(args["redis-url"])
    assert url.scheme == "redis"
    redis = serving(documents, url.hostname, url.port)
    assert redis.deployment["spec"]["replicas"] == 1
    assert redis.container["image"].startswith("redis:")


def test_the_ratelimit_service_reads_the_example_configuration(documents):
    source = ROOT / yaml.safe_load(TOLLGATE_CONFIG.read_text())["ratelimit"]["config"]
    ratelimit = ratelimit_serving(documents)
    directory = flags(ratelimit.container)["config"]
    mounts = [m for m in ratelimit.container["volumeMounts"] if m["mountPath"] == directory]
    assert len(mounts) == 1, f"nothing is mounted at --config={directory}"
    # A whole ConfigMap mounted as a directory changes in place with the
    # ConfigMap (a subPath mount would not), and the service re-reads it.
    assert "subPath" not in mounts[0]
    volume = next(v for v in ratelimit.deployment["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == mounts[0]["name"])
    assert "items" not in volume["configMap"]
    config_map = one(documents, "ConfigMap", volume["configMap"]["name"])
    assert config_map["metadata"]["namespace"] == ratelimit.deployment["metadata"]["namespace"]
    # The service reads every *.yaml file of the directory: the example's, verbatim.
    assert config_map["data"] == {source.name: source.read_text()}
    assert yaml.safe_load(source.read_text())["domain"] == guard_config()["domain"]


# --- 4. what the patches add is valid Envoy configuration --------------------------


def envoy_bin() -> str:
    path = os.environ.get("ENVOY_BIN") or str(ROOT / ".venv" / "bin" / "envoy")
    if not Path(path).exists():
        pytest.fail(f"no Envoy binary at {path} (run `make envoy` or set ENVOY_BIN)", pytrace=False)
    return path


def fill_placeholders(value: Any) -> Any:
    return json.loads(PLACEHOLDER.sub("0" * 64, json.dumps(value)))


def pointer_add(document: Any, path: str, value: Any) -> None:
    """JSON Patch `add`, creating missing parent objects as Envoy Gateway does
    (EnsurePathExistsOnAdd)."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    node = document
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node.append(value) if parts[-1] == "-" else node.insert(int(parts[-1]), value)
    else:
        node[parts[-1]] = value


def test_the_patched_pieces_are_valid_envoy_configuration(documents, tmp_path):
    """Builds, as Envoy Gateway would (v1.9.0 source), the listener filter of
    each wasm entry and a cluster per rule, applies the EnvoyPatchPolicy's
    values (adding the clusters it adds whole) and the EnvoyProxy's bootstrap
    patch, and has the pinned Envoy validate the result: every field name and
    type the patches add must parse. (The modules are not fetched in validate
    mode.)"""
    extension = one(documents, "EnvoyExtensionPolicy")
    proxy = one(documents, "EnvoyProxy")
    patch = one(documents, "EnvoyPatchPolicy")
    route = one(documents, "HTTPRoute")
    tls_backends = {b["metadata"]["name"] for b in find(documents, "Backend") if b["spec"].get("tls")}
    ops = fill_placeholders(patch["spec"]["jsonPatches"])

    bootstrap: dict = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
                       "static_resources": {"clusters": [{
                           "name": "wasm_cluster", "type": "STRICT_DNS", "connect_timeout": "10s",
                           "load_assignment": {"cluster_name": "wasm_cluster", "endpoints": [{"lb_endpoints": [
                               {"endpoint": {"address": {"socket_address": {
                                   "address": "envoy-gateway.envoy-gateway-system.svc.cluster.local",
                                   "port_value": 18002}}}}]}]}}], "listeners": []}}
    for bootstrap_patch in proxy["spec"]["bootstrap"]["jsonPatches"]:
        assert bootstrap_patch["op"] == "add"
        pointer_add(bootstrap, bootstrap_patch["path"], bootstrap_patch["value"])

    # The HCM's wasm filters as Envoy Gateway writes them, then the listener patches.
    http_filters = []
    for i, entry in enumerate(fill_placeholders(extension["spec"]["wasm"])):
        name = wasm_filter_name(extension, i)
        vm = {"vm_id": name.removeprefix("envoy.filters.http.wasm/"), "runtime": "envoy.wasm.runtime.v8",
              "code": {"remote": {"http_uri": {"uri": "http://envoy-gateway:18002/x.wasm", "cluster": "wasm_cluster",
                                               "timeout": "10s"}, "sha256": entry["code"]["http"]["sha256"]}}}
        if entry.get("env"):
            vm["environment_variables"] = {"host_env_keys": entry["env"]["hostKeys"]}
        http_filters.append({"name": name, "disabled": True, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"name": entry["name"], "root_id": entry["rootID"], "vm_config": vm,
                       "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                         "value": json.dumps(entry.get("config", {}))},
                       "fail_open": entry.get("failOpen", False)}}})
    by_name = {f["name"]: f for f in http_filters}
    routes = []
    for i, rule in enumerate(route["spec"]["rules"]):
        headers = [{"name": h["name"], "string_match": {"exact": h["value"]}} for h in rule["matches"][0].get("headers", [])]
        routes.append({"name": f"httproute/tollgate/tollgate/rule/{i}/match/0/*",
                       "match": {"prefix": "/", "headers": headers},
                       "route": {"cluster": f"httproute/tollgate/tollgate/rule/{i}", "timeout": rule["timeouts"]["request"],
                                 "retry_policy": {"retry_on": "connect-failure,retriable-status-codes", "num_retries": 2}},
                       "typed_per_filter_config": {name: {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                                                          "config": {}} for name in by_name}})
    vhost = {"name": "tollgate/tollgate/http/*", "domains": ["*"], "routes": routes}
    for op in ops:
        operation = op["operation"]
        if op["type"].endswith("Listener"):
            match = re.fullmatch(r"\$\.\.http_filters\[\?\(@\.name == '([^']+)'\)\]", operation["jsonPath"])
            assert match and match.group(1) in by_name, operation["jsonPath"]
            pointer_add(by_name[match.group(1)], operation["path"], operation["value"])
        elif op["type"].endswith("RouteConfiguration") and operation["op"] == "replace":
            # A fallback chain: the route of one rule's cluster to an aggregate.
            match = re.fullmatch(ROUTE_BY_CLUSTER, operation["jsonPath"])
            assert match and operation["path"] == "cluster", operation
            selected = [r["route"] for r in routes if r["route"]["cluster"] == match.group(1)]
            assert len(selected) == 1, operation["jsonPath"]
            selected[0]["cluster"] = operation["value"]
        elif op["type"].endswith("RouteConfiguration"):
            targets = {"$.virtual_hosts[*]": [vhost],
                       "$.virtual_hosts[*].routes[*].route.retry_policy": [r["route"]["retry_policy"] for r in routes]}
            for target in targets[operation["jsonPath"]]:
                pointer_add(target, operation["path"], operation["value"])
    bootstrap["static_resources"]["listeners"].append({
        "name": "tollgate/tollgate/http",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "default_filter_chain": {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "http-10080", "route_config": {"name": "tollgate/tollgate/http", "virtual_hosts": [vhost]},
            "http_filters": http_filters + [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}})

    # A cluster per rule: TLS Backends' with the HttpProtocolOptions Envoy Gateway writes, Services' without.
    clusters = {}
    for i, rule in enumerate(route["spec"]["rules"]):
        name = f"httproute/tollgate/tollgate/rule/{i}"
        localities = [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": 8000 + j}}}}]} for j, _ in enumerate(rule["backendRefs"])]
        cluster = {"name": name, "type": "STATIC", "connect_timeout": "10s",
                   "load_assignment": {"cluster_name": name, "endpoints": localities}}
        if all(ref["name"] in tls_backends for ref in rule["backendRefs"]):
            cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}}
            cluster["typed_extension_protocol_options"] = {EXTENSION_OPTIONS_KEY: {
                "@type": f"type.googleapis.com/{EXTENSION_OPTIONS_KEY}", "auto_config": {"http_protocol_options": {}}}}
        clusters[name] = cluster
    for op in ops:
        operation = op["operation"]
        if adds_resource(op):
            assert op["type"].endswith("cluster.v3.Cluster"), op["type"]
            assert operation["value"]["name"] not in clusters, f"{op['name']} is already a cluster"
            clusters[operation["value"]["name"]] = operation["value"]
        elif op["type"].endswith("cluster.v3.Cluster") and "jsonPath" not in operation:
            pointer_add(clusters[op["name"]], operation["path"], operation["value"])
        elif op["type"].endswith(("cluster.v3.Cluster", "ClusterLoadAssignment")):
            match = re.fullmatch(r"\$(?:\.load_assignment)?\.endpoints\[(\d+)\]\.lb_endpoints\[\*\]", operation["jsonPath"])
            assert match, operation["jsonPath"]
            for endpoint in clusters[op["name"]]["load_assignment"]["endpoints"][int(match.group(1))]["lb_endpoints"]:
                pointer_add(endpoint, operation["path"], operation["value"])
    bootstrap["static_resources"]["clusters"] += list(clusters.values())

    config = tmp_path / "envoy-gateway-model.json"
    config.write_text(json.dumps(bootstrap))
    result = subprocess.run([envoy_bin(), "--mode", "validate", "--disable-hot-restart", "-l", "error", "-c", str(config)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
