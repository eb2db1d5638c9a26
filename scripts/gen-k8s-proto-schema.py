#!/usr/bin/env python3
"""Generate src/sandbox/k8s-proto-schema.json: the Kubernetes protobuf message table the sandbox uses to
turn `application/vnd.kubernetes.protobuf` request bodies into the JSON objects kubectl would have sent.

Sources (both already in the cargo registry because the workspace depends on or fetched them):
  * k8s-pb 0.9.0      prost-generated structs: field tags, wire types, repeated/map, message references.
  * k8s-openapi 0.29  (v1_37) serde impls: the exact JSON name of every Rust field ("podIP" => Key_pod_ip)
                      and which fields are required (not `Option<...>`, i.e. no `omitempty` in Go).

The two are joined on (module path, type name, Rust field name); when that fails, on the JSON name with
case and punctuation folded ("$ref" ~ `r#ref`). A type k8s-openapi lacks borrows the names of the type
that inlines it (VolumeSource from Volume) or of the same type in another version of its group; the
rest (lists, options, alpha-only types, `testapigroup`, metrics) fall back to lowerCamelCase.

Go emits zero-valued non-pointer scalars with `omitempty` nowhere in JSON, but its protobuf encoder
always writes them, so presence on the wire alone cannot tell `replicas: 0` (a `*int32` set to zero)
from `generation: 0` (an `int64` left empty). POINTERS below lists the optional scalar fields that are
Go pointers, whose zero value is kept; every other optional scalar drops its zero value.

Regenerate (stdlib only, no network):
    cargo fetch            # makes sure both crates are unpacked under ~/.cargo/registry/src
    python3 scripts/gen-k8s-proto-schema.py            # writes src/sandbox/k8s-proto-schema.json
    python3 scripts/gen-k8s-proto-schema.py --registry DIR --out FILE   # explicit paths

Output (compact JSON; message names are k8s-pb module paths without fixed prefixes, see SHORT):
    {"groups": {"batch": "batch", "": "core", "apiextensions.k8s.io": "apiextensions", ...},
     "messages": {"batch.v1.CronJobSpec": [[tag, jsonName, type, flags], ...], ...},
     "special": {"meta.v1.Time": "time", ...}}
  type: "string" | "int32" | "int64" | "bool" | "bytes" | "double" | a message name,
        or "map:" + value type (keys are always strings in the Kubernetes protos).
  flags: 1 repeated, 2 required (emitted even when zero), 4 pointer (zero kept when present on the wire),
         8 inline (Go `json:",inline"`: the message's fields go into the parent object; jsonName is "").
"""

import argparse
import glob
import json
import os
import re
import sys

PB_CRATE = "k8s-pb-0.9.0"
OPENAPI_CRATE = "k8s-openapi-0.29.0"
OPENAPI_VERSION = "v1_37"  # the newest in the crate, a superset of what k8s-pb knows

# Messages whose JSON form is not an object (custom MarshalJSON in Go).
SPECIAL = {
    "apimachinery.pkg.apis.meta.v1.Time": "time",
    "apimachinery.pkg.apis.meta.v1.MicroTime": "microtime",
    "apimachinery.pkg.apis.meta.v1.Duration": "duration",
    "apimachinery.pkg.apis.meta.v1.FieldsV1": "raw",
    "apimachinery.pkg.api.resource.Quantity": "quantity",
    "apimachinery.pkg.api.resource.QuantityValue": "quantity",
    "apimachinery.pkg.util.intstr.IntOrString": "intorstring",
    "apimachinery.pkg.runtime.RawExtension": "raw",
}
for _v in ("v1", "v1beta1"):
    _p = f"apiextensions_apiserver.pkg.apis.apiextensions.{_v}."
    SPECIAL[_p + "Json"] = "raw"
    SPECIAL[_p + "JsonSchemaPropsOrArray"] = "orarray"
    SPECIAL[_p + "JsonSchemaPropsOrBool"] = "orbool"
    SPECIAL[_p + "JsonSchemaPropsOrStringArray"] = "orstringarray"

# Optional scalar fields that are Go pointers (*bool, *int32, *int64, *string): a zero value present on
# the wire was set on purpose and stays in the JSON. Keyed by "<package>.<Type>" without the group dir
# prefix "api."; the same type name in every version of the package shares the entry.
POINTERS = {
    "core.PodSpec": "terminationGracePeriodSeconds activeDeadlineSeconds automountServiceAccountToken "
    "shareProcessNamespace priority enableServiceLinks hostUsers setHostnameAsFQDN runtimeClassName "
    "preemptionPolicy",
    "core.Container": "restartPolicy",
    "core.EphemeralContainerCommon": "restartPolicy",
    "core.SecurityContext": "privileged runAsUser runAsGroup runAsNonRoot readOnlyRootFilesystem "
    "allowPrivilegeEscalation procMount",
    "core.PodSecurityContext": "runAsUser runAsGroup runAsNonRoot fsGroup fsGroupChangePolicy "
    "supplementalGroupsPolicy",
    "core.WindowsSecurityContextOptions": "gmsaCredentialSpecName gmsaCredentialSpec runAsUserName hostProcess",
    "core.Probe": "terminationGracePeriodSeconds",
    "core.ConfigMapVolumeSource": "defaultMode optional",
    "core.SecretVolumeSource": "defaultMode optional",
    "core.ProjectedVolumeSource": "defaultMode",
    "core.DownwardAPIVolumeSource": "defaultMode",
    "core.KeyToPath": "mode",
    "core.DownwardAPIVolumeFile": "mode",
    "core.ConfigMapProjection": "optional",
    "core.SecretProjection": "optional",
    "core.ClusterTrustBundleProjection": "name signerName optional",
    "core.ConfigMapKeySelector": "optional",
    "core.SecretKeySelector": "optional",
    "core.ConfigMapEnvSource": "optional",
    "core.SecretEnvSource": "optional",
    "core.ServiceAccountTokenProjection": "expirationSeconds",
    "core.CSIVolumeSource": "readOnly fsType",
    "core.HostPathVolumeSource": "type",
    "core.PersistentVolumeClaimSpec": "storageClassName volumeMode volumeAttributesClassName",
    "core.PersistentVolumeSpec": "volumeMode volumeAttributesClassName",
    "core.ServiceSpec": "allocateLoadBalancerNodePorts ipFamilyPolicy internalTrafficPolicy "
    "loadBalancerClass trafficDistribution",
    "core.ServicePort": "appProtocol",
    "core.EndpointPort": "appProtocol",
    "core.ClientIPConfig": "timeoutSeconds",
    "core.ServiceAccount": "automountServiceAccountToken",
    "core.ConfigMap": "immutable",
    "core.Secret": "immutable",
    "core.Toleration": "tolerationSeconds",
    "core.TopologySpreadConstraint": "minDomains nodeAffinityPolicy nodeTaintsPolicy",
    "core.PodDNSConfigOption": "value",
    "core.ContainerStatus": "started",
    "core.ReplicationControllerSpec": "replicas",
    "apps.DeploymentSpec": "replicas revisionHistoryLimit progressDeadlineSeconds",
    "apps.DeploymentStatus": "collisionCount",
    "apps.StatefulSetSpec": "replicas revisionHistoryLimit",
    "apps.StatefulSetStatus": "collisionCount",
    "apps.RollingUpdateStatefulSetStrategy": "partition",
    "apps.ReplicaSetSpec": "replicas",
    "apps.DaemonSetSpec": "revisionHistoryLimit",
    "apps.DaemonSetStatus": "collisionCount",
    "batch.JobSpec": "parallelism completions activeDeadlineSeconds backoffLimit backoffLimitPerIndex "
    "maxFailedIndexes ttlSecondsAfterFinished completionMode suspend podReplacementPolicy manualSelector "
    "managedBy",
    "batch.JobStatus": "ready failedIndexes terminating",
    "batch.CronJobSpec": "startingDeadlineSeconds suspend successfulJobsHistoryLimit failedJobsHistoryLimit "
    "timeZone",
    "batch.SuccessPolicyRule": "succeededIndexes succeededCount",
    "batch.PodFailurePolicyOnExitCodesRequirement": "containerName",
    "autoscaling.HorizontalPodAutoscalerSpec": "minReplicas targetCPUUtilizationPercentage",
    "autoscaling.HorizontalPodAutoscalerStatus": "observedGeneration currentCPUUtilizationPercentage",
    "autoscaling.HPAScalingRules": "stabilizationWindowSeconds selectPolicy",
    "autoscaling.MetricTarget": "averageUtilization",
    "policy.PodDisruptionBudgetSpec": "unhealthyPodEvictionPolicy",
    "networking.IngressSpec": "ingressClassName",
    "networking.HTTPIngressPath": "pathType",
    "networking.NetworkPolicyPort": "protocol endPort",
    "scheduling.PriorityClass": "preemptionPolicy",
    "authentication.TokenRequestSpec": "expirationSeconds",
    "storage.StorageClass": "reclaimPolicy allowVolumeExpansion volumeBindingMode",
    "storage.CSIDriverSpec": "attachRequired podInfoOnMount storageCapacity fsGroupPolicy requiresRepublish "
    "seLinuxMount",
    "apimachinery.pkg.apis.meta.v1.ObjectMeta": "deletionGracePeriodSeconds",
    "apimachinery.pkg.apis.meta.v1.OwnerReference": "controller blockOwnerDeletion",
    "apimachinery.pkg.apis.meta.v1.ListMeta": "remainingItemCount",
    "apimachinery.pkg.apis.meta.v1.DeleteOptions": "gracePeriodSeconds orphanDependents propagationPolicy",
}

SCALARS = {"string", "int32", "int64", "bool", "double"}
ATTR = re.compile(r"#\[prost\((.*)\)\]")
TAG = re.compile(r'tag = "(\d+)"')
STRUCT = re.compile(r"^pub struct (\w+) \{")


def crate_dir(registry, crate):
    hits = sorted(glob.glob(os.path.join(registry, "*", crate)))
    if not hits:
        sys.exit(f"{crate} not found under {registry}; run `cargo fetch` first")
    return hits[-1]


def module_of(root, path):
    rel = os.path.relpath(os.path.dirname(path), root)
    return rel.replace(os.sep, ".")


def resolve(module, rust_type):
    """Resolve a prost type path (relative to `module`) to a dotted message name."""
    for wrapper in (
        "::core::option::Option<",
        "::prost::alloc::vec::Vec<",
        "::prost::alloc::boxed::Box<",
        "::prost::alloc::collections::BTreeMap<::prost::alloc::string::String,",
    ):
        if rust_type.startswith(wrapper):
            return resolve(module, rust_type[len(wrapper) : -1].strip())
    parts = module.split(".")
    segs = rust_type.split("::")
    while segs and segs[0] == "super":
        parts.pop()
        segs.pop(0)
    return ".".join(parts + segs)


def parse_pb(root):
    """message name -> list of (tag, rust field, type, repeated)."""
    messages = {}
    for path in sorted(glob.glob(os.path.join(root, "**", "mod.rs"), recursive=True)):
        module = module_of(root, path)
        lines = open(path, encoding="utf-8").read().splitlines()
        current = None
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            m = STRUCT.match(line)
            if m:
                current = f"{module}.{m.group(1)}"
                messages[current] = []
            elif line == "}":
                current = None
            elif current and line.startswith("#[prost("):
                attr = ATTR.match(line).group(1)
                decl = ""
                i += 1
                while True:
                    decl += " " + lines[i].strip()
                    if decl.rstrip().endswith(",") and decl.count("<") == decl.count(">"):
                        break
                    i += 1
                name, rust_type = decl.strip().rstrip(",")[len("pub ") :].split(":", 1)
                rust_type = re.sub(r"\s+", "", rust_type).replace(",>", ">")
                tag = int(TAG.search(attr).group(1))
                kind = attr.split(",")[0].split("=")[0].strip()
                repeated = "repeated" in attr
                if kind == "btree_map":
                    value = re.search(r'btree_map = "string, (\w+)"', attr).group(1)
                    if value == "message":
                        value = resolve(module, rust_type)
                    ty = "map:" + value
                elif kind == "message":
                    ty = resolve(module, rust_type)
                elif kind in SCALARS or kind == "bytes":
                    ty = kind
                else:
                    sys.exit(f"{path}: unsupported prost kind {kind!r}")
                messages[current].append((tag, name.removeprefix("r#"), ty, repeated))
            i += 1
    return messages


def parse_openapi(root):
    """module.Type -> (rust field -> json name, set of required rust fields)."""
    types = {}
    for path in glob.glob(os.path.join(root, "**", "*.rs"), recursive=True):
        text = open(path, encoding="utf-8").read()
        m = re.search(r"^pub struct (\w+) \{\n(.*?)^\}", text, re.S | re.M)
        if not m:
            continue
        required = set()
        for fm in re.finditer(r"^    pub (\w+): (.+),$", m.group(2), re.M):
            if not fm.group(2).startswith("Option<"):
                required.add(fm.group(1).removeprefix("r#"))
        names = dict(
            (rust, js) for js, rust in re.findall(r'^\s*"([^"]+)" => Field::Key_(\w+),$', text, re.M)
        )
        # prost renames Go's ClientIPConfig to ClientIpConfig: types are joined case-insensitively
        types[f"{module_of(root, path)}.{m.group(1).lower()}"] = (names, required)
    return types


SHORT = [
    ("apimachinery.pkg.apis.meta.", "meta."),
    ("apimachinery.pkg.api.resource.", "apimachinery.resource."),
    ("apimachinery.pkg.util.intstr.", "apimachinery.intstr."),
    ("apimachinery.pkg.runtime.", "apimachinery.runtime."),
    ("apiextensions_apiserver.pkg.apis.", ""),
    ("metrics.pkg.apis.", ""),
    ("api.", ""),
]


def short(name):
    """Table name of a message: its k8s-pb module path with the fixed prefixes dropped (batch.v1.Job)."""
    prefix = "map:" if name.startswith("map:") else ""
    name = name.removeprefix(prefix)
    for long, abbrev in SHORT:
        if name.startswith(long):
            return prefix + abbrev + name[len(long) :]
    return prefix + name


def groups(root):
    """API group -> table package ("batch" -> "batch", "" -> "core"), from k8s-openapi's Resource impls."""
    out = {}
    for path in glob.glob(os.path.join(root, "**", "*.rs"), recursive=True):
        m = re.search(r'const GROUP: &\'static str = "([^"]*)";', open(path, encoding="utf-8").read())
        if m and not module_of(root, path).startswith("apimachinery"):  # meta's own kinds are groupless
            package = short(module_of(root, path)).rpartition(".")[0]
            if out.setdefault(m.group(1), package) != package:
                sys.exit(f"group {m.group(1)} is both {out[m.group(1)]} and {package}")
    return dict(sorted(out.items()))


def fold(name):
    return re.sub(r"[^a-z0-9]", "", name.lower())


def camel(name):
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def pointer_key(message):
    parts = message.lower().split(".")
    return f"{parts[1]}.{parts[-1]}" if parts[0] == "api" else ".".join(parts)


POINTER_FIELDS = {k.lower(): set(v.split()) for k, v in POINTERS.items()}


def openapi_key(message):
    module, _, name = message.rpartition(".")
    return f"{module}.{name.lower()}"


def build(registry):
    pb_root = os.path.join(crate_dir(registry, PB_CRATE), "src")
    oa_root = os.path.join(crate_dir(registry, OPENAPI_CRATE), "src", OPENAPI_VERSION)
    pb = parse_pb(pb_root)
    oa = parse_openapi(oa_root)
    out, special, fallback = {}, dict(SPECIAL), []
    # A message k8s-openapi lacks borrows names from (1) the openapi type that inlines it (VolumeSource
    # into Volume), else (2) the same type in another version of its group (v1beta1.X from v1.X).
    borrowed = {}
    for message, fields in pb.items():
        names = oa.get(openapi_key(message), ({}, set()))[0]
        for _, rust, ty, repeated in fields:
            if ty in pb and not repeated and rust not in names and openapi_key(ty) not in oa:
                borrowed.setdefault(ty, (names, set()))
    inline_names = set()
    for message, fields in pb.items():
        parent = {fold(js) for js in oa.get(openapi_key(message), ({}, set()))[0].values()}
        for _, rust, ty, repeated in fields:
            child = {fold(f[1]) for f in pb.get(ty, [])}
            # an inlined child may itself inline one more message (RuleWithOperations -> Rule)
            if parent and child and not repeated and fold(rust) not in parent and len(child & parent) >= len(child) - 1 >= 0 and child & parent:
                inline_names.add(ty.rpartition(".")[2])
    notes = 0
    by_type = {}
    for key, value in sorted(oa.items()):
        module, _, name = key.rpartition(".")
        by_type.setdefault((module.rpartition(".")[0], name), value)
    for message, fields in sorted(pb.items()):
        if message in SPECIAL or ".testapigroup." in message:
            continue
        if (
            len(fields) == 1
            and fields[0][1] == "items"
            and fields[0][2] == "string"
            and fields[0][3]
            and openapi_key(message) not in oa
        ):
            special[message] = "strings"  # Go `type ExtraValue []string` and friends
            continue
        in_oa = openapi_key(message) in oa
        module, _, name = openapi_key(message).rpartition(".")
        names, required = oa.get(openapi_key(message)) or borrowed.get(message) or by_type.get(
            (module.rpartition(".")[0], name), ({}, set())
        )
        in_oa = bool(names)
        by_fold = {fold(js): js for js in names.values()}
        pointers = POINTER_FIELDS.get(pointer_key(message), set())
        rows = []
        for tag, rust, ty, repeated in fields:
            if in_oa:
                js = names.get(rust) or names.get(rust + "_") or by_fold.get(fold(rust))
                if js is None and ty in pb and not repeated and ty.rpartition(".")[2] in inline_names:
                    js, inline = "", True  # Go `json:",inline"`: the fields sit in the parent object
                elif js is None:
                    js, inline, notes = camel(rust), False, notes + 1
                else:
                    inline = False
            else:
                js, inline = camel(rust), ty.rpartition(".")[2] in inline_names
                js = "" if inline else js
            flags = (1 if repeated else 0) | (2 if rust in required else 0) | (4 if js in pointers else 0)
            flags |= 8 if inline else 0
            rows.append([tag, js, ty, flags])
        if not in_oa:
            fallback.append(message)
        out[message] = rows
    known = {(pointer_key(m), js) for m, rows in out.items() for _, js, _, _ in rows}
    for key, fields in POINTER_FIELDS.items():
        for js in fields:
            if (key, js) not in known:
                sys.exit(f"POINTERS entry {key}.{js} matches no field")
    print(
        f"{len(out)} messages, {len(special)} special; lowerCamelCase names: {len(fallback)} whole messages, "
        f"{notes} single fields",
        file=sys.stderr,
    )
    messages = {short(m): [[t, js, short(ty), f] for t, js, ty, f in rows] for m, rows in out.items()}
    special = {short(m): kind for m, kind in sorted(special.items())}
    return {"groups": groups(oa_root), "messages": messages, "special": special}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--registry", default=os.path.expanduser("~/.cargo/registry/src"))
    ap.add_argument("--out", default=os.path.join(here, "..", "src", "sandbox", "k8s-proto-schema.json"))
    args = ap.parse_args()
    table = build(args.registry)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(table, f, separators=(",", ":"), sort_keys=False)
        f.write("\n")


if __name__ == "__main__":
    main()
