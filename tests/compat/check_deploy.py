"""Checks the Kubernetes and KServe manifests under deploy/, offline.

Run: python tests/compat/check_deploy.py [path/to/cairn]   (default: target/debug/cairn)

1. yamllint, with deploy/.yamllint, on every YAML file under deploy/; a warning fails too.
2. Built-in kinds (Deployment, Service, ...): kubernetes-validate in strict mode (an unknown
   field is an error) against the Kubernetes versions in KUBERNETES_VERSIONS.
3. Custom resources (ServiceMonitor, ClusterServingRuntime, InferenceService): their CRDs'
   openAPIV3Schema, vendored in deploy/*/schemas/, as the API server applies it with strict
   field validation: a field the schema does not declare is an error (it would be pruned),
   list-map keys are unique, metadata is a valid ObjectMeta.
4. Kustomizations: every file they name exists and every manifest beside them is named; each
   component's JSON patch (models-pvc, object-store) applied to the Deployment gives a valid
   Deployment. With kubectl on PATH, `kubectl kustomize` renders the base and the base with
   each component, and what it renders must equal what was checked here.
5. Consistency with the image and the code: the user id and paths of the Dockerfile; flags
   and environment variables that `cairn serve --help` knows; ports of the containers, the
   Service, the probes and the listen addresses; the Deployment's grace period longer than its
   preStop sleep plus CAIRN_SHUTDOWN_TIMEOUT_S; selectors, the HPA target, the PDB budget, the
   ServiceMonitor's port; the InferenceServices against the runtime. The object-store
   component's training CronJob: `cairn train` with flags it knows, as the image's user, its
   config a mounted ConfigMap key that parses and publishes to the replicas' repository, its
   runs store and TMPDIR on writable volumes, its data in the image, a gate refusal (exit 4)
   failing the Job; the replicas' variables known to `cairn serve` and their replica_id the
   pod's name.
6. The real server, once per container (the Deployment, the Deployment with each component,
   the KServe runtime), started with that container's arguments and environment,
   its paths mapped onto this machine (the image's /opt/cairn is the repository root, volumes
   are temporary directories, the admin token Secret a file): the settings it reports are the
   manifest's, every probe path answers 200, the metrics path answers without a token, the
   management API wants the token, the gRPC listener answers ServerReady (Triton's client) where
   the build serves gRPC, nothing is written into the model repository (mounted read-only in
   the pod), and SIGTERM ends it cleanly within CAIRN_SHUTDOWN_TIMEOUT_S. For the object-store
   component, an S3 server (moto, on 127.0.0.1) stands in for the bucket and its Secret: the
   CronJob's `cairn train` runs first, as its pod would, and must publish version 1 to the
   bucket, complete; then the Deployment with the component must serve that version.

Every failure is collected; the script exits non-zero listing them all.

Vendoring a CRD's schema (deploy/*/schemas/README.md says which and from where):
  python tests/compat/check_deploy.py --vendor CRD.yaml OUT.json REPOSITORY TAG COMMIT PATH
"""

import copy
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

import jsonschema
import kubernetes_validate
import yaml
import yamllint.config
import yamllint.linter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cairn_server import ROOT, Server  # noqa: E402
from check_monitoring import FAILURES, check  # noqa: E402
from checks import finish  # noqa: E402

DEPLOY = os.path.join(ROOT, "deploy")
BINARY = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "cairn")

# 1.30: the oldest release the manifests target (the preStop `sleep` action is on by default
# from 1.30). 1.37: the newest kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.30", "1.37")
# The vendored CRD schemas, by (API group, kind).
CRD_SCHEMAS = {
    ("monitoring.coreos.com", "ServiceMonitor"): "kubernetes/schemas/servicemonitor-v1.json",
    ("serving.kserve.io", "ClusterServingRuntime"): "kserve/schemas/clusterservingruntime-v1alpha1.json",
    ("serving.kserve.io", "InferenceService"): "kserve/schemas/inferenceservice-v1beta1.json",
}
# Settings of the manifests that this build of the server may not have yet: tolerated (with a
# note) while `cairn serve --help` does not list them, checked like the rest once it does.
NOT_YET_IN_EVERY_BUILD = {"CAIRN_GRPC_LISTEN", "--grpc-listen"}
# The kustomize Components beside the base, each applied to it alone.
COMPONENTS = ("models-pvc", "object-store")
# The bucket the object-store component names, served here by moto.
BUCKET = "cairn-models"
# Kubernetes' default terminationGracePeriodSeconds, which KServe's pods keep in Standard mode.
DEFAULT_GRACE_S = 30
# How long a server of the check may take to become ready.
READY_TIMEOUT_S = 120


def rel(path):
    return os.path.relpath(path, ROOT)


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def one_doc(path):
    docs = load_docs(path)
    if not check(len(docs) == 1, f"{rel(path)}: {len(docs)} YAML documents, expected one"):
        return None
    return docs[0]


def where(path, doc):
    return f"{rel(path)} ({doc.get('kind')}/{doc.get('metadata', {}).get('name')})"


# --------------------------------------------------------------------------------------------
# 1. yamllint
# --------------------------------------------------------------------------------------------

def yaml_files():
    found = []
    for dirpath, _, names in os.walk(DEPLOY):
        found += [os.path.join(dirpath, n) for n in names if n.endswith((".yaml", ".yml"))]
    found.append(os.path.join(DEPLOY, ".yamllint"))
    return sorted(found)


def lint():
    print("== yamllint (deploy/.yamllint)")
    config = yamllint.config.YamlLintConfig(file=os.path.join(DEPLOY, ".yamllint"))
    files = yaml_files()
    problems = 0
    for path in files:
        with open(path) as f:
            for p in yamllint.linter.run(f, config, path):
                problems += 1
                check(False, f"yamllint: {rel(path)}:{p.line}:{p.column}: {p.level}: {p.desc} ({p.rule})")
    print(f"  {len(files)} files, {problems} problems")


# --------------------------------------------------------------------------------------------
# 2. and 3. Schemas
# --------------------------------------------------------------------------------------------

def validate_builtin(name, doc):
    """kubernetes-validate, strict, against every version of KUBERNETES_VERSIONS."""
    for version in KUBERNETES_VERSIONS:
        try:
            used = kubernetes_validate.validate(doc, version, strict=True)
            check(used == version, f"{name}: asked for Kubernetes {version}, validated against {used}")
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            check(False, f"{name}: Kubernetes {version} schema: {path}: {e.message}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
            check(False, f"{name}: {e.message}")


def strict_crd_schema(schema):
    """The schema as the API server applies it with strict field validation: a field that
    pruning would drop (not declared, and no x-kubernetes-preserve-unknown-fields) is an
    error, and `nullable` admits null."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {k: strict_crd_schema(v) for k, v in schema["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            out[key] = strict_crd_schema(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            out[key] = [strict_crd_schema(s) for s in schema[key]]
    if (schema.get("type") == "object" and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if schema.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if schema.get("nullable") and isinstance(schema.get("type"), str):
        out["type"] = [schema["type"], "null"]
    return out


def _list_map_keys(validator, keys, instance, schema):
    """x-kubernetes-list-map-keys: no two items of a list-map share their keys."""
    if schema.get("x-kubernetes-list-type") != "map" or not validator.is_type(instance, "array"):
        return
    seen = set()
    for item in instance:
        if isinstance(item, dict):
            key = tuple(json.dumps(item.get(k), sort_keys=True) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(f"two entries with {', '.join(f'{k}={item.get(k)!r}' for k in keys)}")
            seen.add(key)


# OpenAPI v3.0 schemas are closest to JSON Schema draft 4 (boolean exclusiveMinimum, ...).
CrdValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator, {"x-kubernetes-list-map-keys": _list_map_keys})


def load_crd_schemas():
    schemas = {}
    for key, path in CRD_SCHEMAS.items():
        with open(os.path.join(DEPLOY, path)) as f:
            vendored = json.load(f)
        schema = strict_crd_schema(vendored["openAPIV3Schema"])
        # metadata is checked as an ObjectMeta (validate_metadata); the CRD leaves it open.
        schema["properties"]["metadata"] = {"type": "object"}
        CrdValidator.check_schema(schema)
        schemas[key] = (vendored, CrdValidator(schema))
    return schemas


def validate_metadata(name, doc):
    """ObjectMeta with Kubernetes' own schema, by way of a ConfigMap that carries it."""
    carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata", {})}
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(carrier, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            check(False, f"{name}: Kubernetes {version} ObjectMeta: {path}: {e.message}")


def validate_custom(name, doc, schemas):
    group, _, version = doc.get("apiVersion", "").rpartition("/")
    entry = schemas.get((group, doc.get("kind")))
    if not check(entry is not None, f"{name}: no vendored schema for {doc.get('apiVersion')} {doc.get('kind')}"):
        return
    vendored, validator = entry
    check(version == vendored["version"],
          f"{name}: apiVersion {doc['apiVersion']}, but the CRD serves {vendored['group']}/{vendored['version']}")
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
        path = ".".join(str(p) for p in e.path)
        check(False, f"{name}: {vendored['crd']} schema ({vendored['source']['tag']}): {path}: {e.message}")
    validate_metadata(name, doc)
    if vendored["scope"] == "Cluster":
        check("namespace" not in doc.get("metadata", {}), f"{name}: cluster-scoped, yet has a namespace")


def is_builtin(doc):
    group = doc.get("apiVersion", "").rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


# DNS-1035 labels: what Services and InferenceServices require, and fine for every other kind.
NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def validate_all(docs, schemas):
    """docs: [(name, doc)]. Returns how many were checked each way."""
    builtin = custom = 0
    for name, doc in docs:
        check(NAME.match(str(doc.get("metadata", {}).get("name", ""))),
              f"{name}: the name is not a DNS-1035 label (lower case letters, digits, '-')")
        if is_builtin(doc):
            validate_builtin(name, doc)
            builtin += 1
        else:
            validate_custom(name, doc, schemas)
            custom += 1
    return builtin, custom


# --------------------------------------------------------------------------------------------
# 4. Kustomizations
# --------------------------------------------------------------------------------------------

def json_patch(doc, ops, name):
    """RFC 6902 `add`, `replace` and `test` (what the components use); anything else is
    reported. A `test` that fails is reported, as kustomize would refuse the patch."""
    doc = copy.deepcopy(doc)
    for op in ops:
        kind = op.get("op")
        if not check(kind in ("add", "replace", "test"), f"{name}: op {kind!r} is not one this check applies"):
            continue
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        try:
            target = doc
            for p in parts[:-1]:
                target = target[int(p)] if isinstance(target, list) else target[p]
            last = parts[-1]
            key = (len(target) if last == "-" else int(last)) if isinstance(target, list) else last
            if kind == "test":
                check(target[key] == op["value"], f"{name}: test {op['path']} == {op['value']!r} fails: "
                                                  f"it is {target[key]!r}")
            elif kind == "replace":
                target[key]  # noqa: B018 - replace needs an existing member
                target[key] = copy.deepcopy(op["value"])
            elif isinstance(target, list):
                target.insert(key, copy.deepcopy(op["value"]))
            else:
                target[key] = copy.deepcopy(op["value"])
        except (KeyError, IndexError, ValueError, TypeError) as e:
            check(False, f"{name}: path {op['path']} does not exist in the target ({e!r})")
    return doc


def read_kustomization(directory):
    """{'kind', 'resources': [(path, doc)], 'patches': [(path, ops, target)], 'images'}."""
    path = os.path.join(directory, "kustomization.yaml")
    k = one_doc(path) or {}
    name = rel(path)
    check(k.get("apiVersion", "").startswith("kustomize.config.k8s.io/"), f"{name}: apiVersion {k.get('apiVersion')}")
    out = {"kind": k.get("kind"), "resources": [], "patches": [], "images": k.get("images", [])}
    named = {"kustomization.yaml"}
    for res in k.get("resources", []):
        full = os.path.join(directory, res)
        named.add(res)
        if check(os.path.isfile(full), f"{name}: resource {res} does not exist"):
            out["resources"] += [(full, d) for d in load_docs(full)]
    for p in k.get("patches", []):
        full = os.path.join(directory, p.get("path", ""))
        named.add(p.get("path"))
        if check(os.path.isfile(full), f"{name}: patch {p.get('path')} does not exist"):
            ops = one_doc(full)
            if check(isinstance(ops, list), f"{rel(full)}: a JSON patch is a list of operations"):
                out["patches"].append((full, ops, p.get("target", {})))
    beside = {n for n in os.listdir(directory) if n.endswith((".yaml", ".yml"))}
    for n in sorted(beside - named):
        check(False, f"{name} does not name {n}, which sits beside it")
    return out


def pod_spec(doc):
    """The pod template's spec of a Deployment, a Job or a CronJob ({} for other kinds)."""
    spec = doc.get("spec", {})
    if doc.get("kind") == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return spec.get("template", {}).get("spec", {})


def apply_images(doc, images):
    """kustomize's `images` transformer on the containers of a pod template."""
    doc = copy.deepcopy(doc)
    for c in pod_spec(doc).get("containers", []):
        repo, _, tag = c["image"].partition(":")
        for img in images:
            if img["name"] == repo:
                c["image"] = f"{img.get('newName', repo)}:{img.get('newTag', tag)}"
    return doc


def kubectl_kustomize(directory):
    out = subprocess.run(["kubectl", "kustomize", directory], capture_output=True, text=True, timeout=120)
    if not check(out.returncode == 0, f"kubectl kustomize {rel(directory)}: {out.stderr.strip()}"):
        return None
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def same_objects(label, rendered, ours):
    def key(d):
        return (d.get("kind"), d["metadata"]["name"])
    mine = {key(d): d for d in ours}
    theirs = {key(d): d for d in rendered}
    check(set(mine) == set(theirs), f"{label}: kubectl kustomize renders {sorted(theirs)}, expected {sorted(mine)}")
    for k in sorted(set(mine) & set(theirs)):
        check(mine[k] == theirs[k], f"{label}: kubectl kustomize renders {k} differently from the checked object")


def render(base, components, patched):
    """`kubectl kustomize` on the base and on the base with each component, where kubectl is on
    PATH: what it renders must be exactly the objects checked here."""
    print("== kustomize")
    images = base["images"]
    ours_base = [apply_images(d, images) for _, d in base["resources"]]
    if not shutil.which("kubectl"):
        print("  kubectl not on PATH: rendering skipped (files named, patches applied and validated above)")
        return
    rendered = kubectl_kustomize(os.path.join(DEPLOY, "kubernetes"))
    if rendered is not None:
        same_objects("deploy/kubernetes", rendered, ours_base)
    for n, component in components.items():
        ours = [apply_images(patched[n], images) if d["kind"] == "Deployment" else d for d in ours_base] + \
            [apply_images(d, images) for _, d in component["resources"]]
        overlay = tempfile.mkdtemp(prefix="check-deploy-overlay-", dir=os.path.join(ROOT, "target"))
        try:
            with open(os.path.join(overlay, "kustomization.yaml"), "w") as f:
                yaml.safe_dump({
                    "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                    "resources": [os.path.relpath(os.path.join(DEPLOY, "kubernetes"), overlay)],
                    "components": [os.path.relpath(os.path.join(DEPLOY, "kubernetes", n), overlay)],
                    "images": images,
                }, f)
            rendered = kubectl_kustomize(overlay)
            if rendered is not None:
                same_objects(f"deploy/kubernetes + {n}", rendered, ours)
        finally:
            shutil.rmtree(overlay, ignore_errors=True)
    version = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True).stdout
    print(f"  kubectl kustomize ({' '.join(version.split()[:6])}) renders the base and the base with "
          f"{', '.join(components)} as checked")


# --------------------------------------------------------------------------------------------
# 5. Consistency with the image and the code
# --------------------------------------------------------------------------------------------

def read_dockerfile():
    """What the runtime stage of the Dockerfile says about the user, paths and command."""
    text = open(os.path.join(ROOT, "Dockerfile")).read()
    runtime = text[text.rfind("\nFROM "):]
    image = {
        "uid": int(re.search(r"useradd\b[^\n]*--uid\s+(\d+)", runtime).group(1)),
        "workdir": re.findall(r"^WORKDIR\s+(\S+)", runtime, re.M)[-1],
        "env": dict(re.findall(r"^ENV\s+(\w+)=(\S+)", runtime, re.M)),
        "entrypoint": json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])", runtime, re.M).group(1)),
        "cmd": json.loads(re.search(r"^CMD\s+(\[.*\])", runtime, re.M).group(1)),
        "copies": {},
        "volumes": re.findall(r"^VOLUME\s+(\S+)", runtime, re.M),
    }
    for src, dst in re.findall(r"^COPY\s+(?:--chown=\S+\s+)?(\w[\w./-]*)\s+(/\S+)$", runtime, re.M):
        image["copies"][dst] = os.path.join(ROOT, src)
    return image


def serve_help():
    """Flags and environment variables of `cairn serve`, from its --help."""
    out = subprocess.run([BINARY, "serve", "--help"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        sys.exit(f"{BINARY} serve --help failed: {out.stderr}")
    return set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", out.stdout)), set(re.findall(r"\[env: ([A-Z0-9_]+)", out.stdout))


def known(name, setting, known_set, what):
    if setting in known_set:
        return
    if setting in NOT_YET_IN_EVERY_BUILD:
        print(f"  note: {name}: this build of the server has no {what} {setting} yet; not checked")
        return
    check(False, f"{name}: `cairn serve --help` lists no {what} {setting}")


def shutdown_timeout(env):
    value = env.get("CAIRN_SHUTDOWN_TIMEOUT_S") or ""
    return int(value) if value.isdigit() else 30


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def arg_value(args, flag):
    for i, a in enumerate(args):
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
        if a == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def probe_port(container, probe):
    """A probe's port as a number, named ports resolved against the container."""
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    check(port in named, f"container {container['name']}: probe port {port!r} names no container port")
    return named.get(port)


def check_container(name, container, pod, image, flags, envs, listen_port):
    """What every container of the server must get right; returns the shutdown timeout."""
    env = env_of(container)
    args = container.get("args", image["cmd"])
    check("command" not in container,
          f"{name}: sets `command`; the image's entrypoint {image['entrypoint']} is the server")
    check(args[:1] == ["serve"], f"{name}: arguments {args} do not start with `serve`")
    for a in args[1:]:
        if a.startswith("--"):
            known(name, a.split("=", 1)[0], flags, "flag")
    for var in env:
        if var.startswith("CAIRN_"):
            known(name, var, envs, "environment variable")
    # Security: the image's user, by number.
    sc = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    check(sc.get("runAsNonRoot") is True, f"{name}: runAsNonRoot is not true")
    check(sc.get("runAsUser") == image["uid"],
          f"{name}: runAsUser {sc.get('runAsUser')}, the image's user is {image['uid']} (Dockerfile)")
    check(sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation is not false")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities are not all dropped")
    check(sc.get("readOnlyRootFilesystem") is True, f"{name}: the root file system is not read-only")
    # Probes: the health endpoints, on the port the server listens on for HTTP.
    for kind, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready"),
                       ("livenessProbe", "/v2/health/live")):
        probe = container.get(kind)
        if not check(probe and "httpGet" in probe, f"{name}: no httpGet {kind}"):
            continue
        check(probe["httpGet"]["path"] == path, f"{name}: {kind} asks {probe['httpGet']['path']}, expected {path}")
        check(probe_port(container, probe) == listen_port,
              f"{name}: {kind} on port {probe['httpGet']['port']}, the server listens for HTTP on {listen_port}")
    # State: where the server writes, a directory it can write.
    state = env.get("CAIRN_STATE_DIR") or arg_value(args, "--state-dir") or image["env"].get("CAIRN_STATE_DIR")
    check(state is not None, f"{name}: no state directory (CAIRN_STATE_DIR)")
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    if sc.get("readOnlyRootFilesystem"):
        check(state in mounts and not mounts[state].get("readOnly"),
              f"{name}: read-only root file system, yet the state directory {state} is no writable volume")
    else:
        check(state in image["volumes"], f"{name}: state directory {state} is not the image's own {image['volumes']}")
    timeout = env.get("CAIRN_SHUTDOWN_TIMEOUT_S")
    check(timeout is not None and timeout.isdigit(),
          f"{name}: CAIRN_SHUTDOWN_TIMEOUT_S is {timeout!r}; set it explicitly, in whole seconds")
    return shutdown_timeout(env)


def consistency(base, kserve):
    print("== consistency with the Dockerfile, `cairn serve --help` and between manifests")
    image = read_dockerfile()
    flags, envs = serve_help()
    objs = {(d["kind"], d["metadata"]["name"]): (p, d) for p, d in base}
    dep = objs.get(("Deployment", "cairn"), (None, None))[1]
    svc = objs.get(("Service", "cairn"), (None, None))[1]
    if not check(dep and svc, "deploy/kubernetes: no Deployment and Service named cairn"):
        return
    pod = dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    check(len(pod["containers"]) == 1, "Deployment: one container expected")
    c = pod["containers"][0]
    env = env_of(c)
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    check(set(ports) == {"http", "grpc"}, f"Deployment: container ports {ports}, expected http and grpc")
    check(port_of(env.get("CAIRN_LISTEN", "0.0.0.0:8000")) == ports.get("http"),
          f"Deployment: CAIRN_LISTEN {env.get('CAIRN_LISTEN')} is not on containerPort http {ports.get('http')}")
    check(port_of(env.get("CAIRN_GRPC_LISTEN", "0.0.0.0:8001")) == ports.get("grpc"),
          f"Deployment: CAIRN_GRPC_LISTEN {env.get('CAIRN_GRPC_LISTEN')} is not on containerPort grpc "
          f"{ports.get('grpc')}")
    shutdown = check_container("Deployment", c, pod, image, flags, envs, ports.get("http"))
    # Image placeholder and model repository.
    check(c["image"].partition(":")[0] == "cairn", f"Deployment: image {c['image']}, expected the placeholder cairn")
    repo = env.get("CAIRN_MODEL_REPOSITORY", "models")
    check(os.path.normpath(os.path.join(image["workdir"], repo)) in image["copies"],
          f"Deployment: model repository {repo} is not where the Dockerfile copies the models")
    # Grace: preStop sleep + drain < terminationGracePeriodSeconds.
    grace = pod.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S)
    sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
    check(sleep is not None and 0 < sleep <= 15, f"Deployment: preStop sleep {sleep}, expected a short one (1-15 s)")
    check(grace > (sleep or 0) + shutdown,
          f"Deployment: terminationGracePeriodSeconds {grace} is not more than the preStop sleep {sleep} "
          f"+ CAIRN_SHUTDOWN_TIMEOUT_S {shutdown}")
    # Service: selects the pods; its ports are the container's, by name and number.
    check(matches(svc["spec"]["selector"], pod_labels), "Service: selector does not match the pod labels")
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    check(set(svc_ports) == set(ports), f"Service: ports {sorted(svc_ports)}, the container's are {sorted(ports)}")
    for n, p in svc_ports.items():
        target = p.get("targetPort", p["port"])
        check(target in (n, ports.get(n)), f"Service: port {n} targets {target}, not the container port {n}")
        check(p["port"] == ports.get(n), f"Service: port {n} is {p['port']}, the container's is {ports.get(n)}")
    check(svc_ports.get("grpc", {}).get("appProtocol") == "grpc", "Service: the grpc port has no appProtocol grpc")
    # HPA, PDB, ServiceMonitor.
    hpa = objs.get(("HorizontalPodAutoscaler", "cairn"), (None, None))[1]
    if check(hpa, "deploy/kubernetes: no HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        check((ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", "cairn"),
              f"HPA: targets {ref}, not the Deployment")
        check(hpa["spec"].get("minReplicas", 1) >= 2, "HPA: minReplicas below 2 leaves no pod during a disruption")
        check(any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"].get("metrics", [])),
              "HPA: does not scale on CPU")
        check(c.get("resources", {}).get("requests", {}).get("cpu"),
              "Deployment: no CPU request, which the HPA's utilization is relative to")
        check("replicas" not in dep["spec"], "Deployment: sets replicas, which the HPA owns")
    pdb = objs.get(("PodDisruptionBudget", "cairn"), (None, None))[1]
    if check(pdb, "deploy/kubernetes: no PodDisruptionBudget"):
        check(matches(pdb["spec"]["selector"]["matchLabels"], pod_labels),
              "PDB: selector does not match the pod labels")
        if hpa:
            check(pdb["spec"].get("maxUnavailable", 0) < hpa["spec"].get("minReplicas", 1),
                  "PDB: maxUnavailable lets every replica go at once")
    smon = objs.get(("ServiceMonitor", "cairn"), (None, None))[1]
    if check(smon, "deploy/kubernetes: no ServiceMonitor"):
        check(matches(smon["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]),
              "ServiceMonitor: selector does not match the Service's labels")
        for ep in smon["spec"]["endpoints"]:
            check(ep.get("port") == "http" and ep.get("port") in svc_ports, f"ServiceMonitor: port {ep.get('port')}")
            check(ep.get("path") == "/metrics", f"ServiceMonitor: path {ep.get('path')}")
    annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
    check(annotations.get("prometheus.io/port") == str(ports.get("http")),
          "Deployment: prometheus.io/port is not the http port")
    print(f"  Deployment: uid {image['uid']} (Dockerfile), ports {ports} = Service, probes on http, "
          f"grace {grace} s > preStop {sleep} s + shutdown {shutdown} s")

    # KServe: the runtime and the InferenceServices that use it.
    runtimes = [d for _, d in kserve if d["kind"] == "ClusterServingRuntime"]
    isvcs = [(p, d) for p, d in kserve if d["kind"] == "InferenceService"]
    if not check(len(runtimes) == 1 and isvcs,
                 "deploy/kserve: one ClusterServingRuntime and InferenceServices expected"):
        return
    rt = runtimes[0]
    spec = rt["spec"]
    (kc,) = [x for x in spec["containers"] if x["name"] == "kserve-container"] or [None]
    if not check(kc, "ClusterServingRuntime: no container named kserve-container"):
        return
    args = kc.get("args", [])
    renv = env_of(kc)
    check(arg_value(args, "--model-repository") == "/mnt/models",
          f"ClusterServingRuntime: --model-repository is {arg_value(args, '--model-repository')}, "
          "KServe's storage initializer mounts the model at /mnt/models")
    http_port = port_of(arg_value(args, "--listen") or renv.get("CAIRN_LISTEN", "0.0.0.0:8000"))
    grpc_port = port_of(arg_value(args, "--grpc-listen") or renv.get("CAIRN_GRPC_LISTEN", "0.0.0.0:8001"))
    check(http_port == 8080, f"ClusterServingRuntime: REST on {http_port}; KServe and Knative send to 8080")
    check(grpc_port == 9000, f"ClusterServingRuntime: gRPC on {grpc_port}; KServe's V2 runtimes use 9000")
    check("ports" not in kc, "ClusterServingRuntime: declares ports; KServe's convention is none (8080)")
    rshutdown = check_container("ClusterServingRuntime", kc, spec, image, flags, envs, http_port)
    check(rshutdown < DEFAULT_GRACE_S,
          f"ClusterServingRuntime: CAIRN_SHUTDOWN_TIMEOUT_S {rshutdown} is not within the default grace "
          f"period {DEFAULT_GRACE_S}")
    check(kc.get("image", "").partition(":")[0] == "cairn", f"ClusterServingRuntime: image {kc.get('image')}")
    check(spec.get("annotations", {}).get("prometheus.kserve.io/port") == str(http_port),
          "ClusterServingRuntime: prometheus.kserve.io/port is not the REST port")
    formats = {(f["name"], f.get("version")): f for f in spec["supportedModelFormats"]}
    check(("onnx", "1") in formats and formats[("onnx", "1")].get("autoSelect") is True,
          "ClusterServingRuntime: onnx version 1 with autoSelect expected")
    # Triton's runtime holds priority 1 for onnx and OpenVINO's 2: KServe refuses a runtime that
    # repeats a priority another auto-selecting runtime has for the same format.
    check(formats.get(("onnx", "1"), {}).get("priority") not in (1, 2),
          "ClusterServingRuntime: onnx priority 1 or 2 collides with KServe's Triton or OpenVINO runtime")
    check(spec.get("protocolVersions") == ["v2", "grpc-v2"],
          f"ClusterServingRuntime: protocols {spec.get('protocolVersions')}, expected v2 and grpc-v2")
    for path, isvc in isvcs:
        name = where(path, isvc)
        model = isvc["spec"]["predictor"].get("model", {})
        check(model.get("runtime") == rt["metadata"]["name"], f"{name}: runtime {model.get('runtime')}")
        check(model.get("modelFormat", {}).get("name") in {n for n, _ in formats},
              f"{name}: model format {model.get('modelFormat')} is not the runtime's")
        proto = model.get("protocolVersion")
        check(proto in spec["protocolVersions"], f"{name}: protocol {proto} is not the runtime's")
        check(model.get("storageUri"), f"{name}: no storageUri")
        iports = model.get("ports", [])
        if proto == "grpc-v2":
            check([(p.get("name"), p.get("containerPort")) for p in iports] == [("h2c", grpc_port)],
                  f"{name}: gRPC needs one port named h2c on the runtime's gRPC port {grpc_port}")
        else:
            check(not iports, f"{name}: REST needs no ports (KServe sends to 8080)")
    print(f"  ClusterServingRuntime: /mnt/models, REST {http_port}, gRPC {grpc_port}, shutdown {rshutdown} s "
          f"< {DEFAULT_GRACE_S} s; {len(isvcs)} InferenceServices use it")


def train_help():
    """Flags of `cairn train`, from its --help."""
    out = subprocess.run([BINARY, "train", "--help"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        sys.exit(f"{BINARY} train --help failed: {out.stderr}")
    return set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", out.stdout))


def config_maps(resources):
    return {d["metadata"]["name"]: d.get("data", {}) for _, d in resources if d["kind"] == "ConfigMap"}


def training_job(deployment, resources):
    """The object-store component's CronJob against the image, `cairn train --help`, its
    ConfigMap and the replicas it publishes to."""
    print("== the training CronJob: consistency with the Dockerfile, `cairn train --help` and the replicas")
    import tomllib

    image = read_dockerfile()
    # The replicas' settings with the component: each one `cairn serve` knows.
    _, envs = serve_help()
    served = deployment["spec"]["template"]["spec"]["containers"][0]
    for var in env_of(served):
        if var.startswith("CAIRN_"):
            known("Deployment with object-store", var, envs, "environment variable")
    check(any(e.get("name") == "CAIRN_REPLICA_ID"
              and e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name"
              for e in served.get("env", [])),
          "Deployment with object-store: CAIRN_REPLICA_ID is not the pod's name (the leases name replicas by it)")
    jobs = [d for _, d in resources if d["kind"] == "CronJob"]
    if not check(len(jobs) == 1, f"the object-store component: {len(jobs)} CronJobs, expected one"):
        return
    job = jobs[0]
    name = f"CronJob/{job['metadata']['name']}"
    check(job["spec"].get("concurrencyPolicy") == "Forbid",
          f"{name}: concurrencyPolicy is not Forbid: two runs of one model would publish side by side")
    jspec = job["spec"]["jobTemplate"]["spec"]
    pod = pod_spec(job)
    check(pod.get("restartPolicy") == "Never", f"{name}: restartPolicy is not Never (the Job retries, not the kubelet)")
    refusal = [r for r in jspec.get("podFailurePolicy", {}).get("rules", [])
               if r.get("action") == "FailJob" and 4 in r.get("onExitCodes", {}).get("values", [])]
    check(refusal, f"{name}: exit status 4 (the gate refused the version) should fail the Job, not be retried")
    (c,) = pod["containers"] or [None]
    args = c.get("args", [])
    check("command" not in c, f"{name}: sets `command`; the image's entrypoint {image['entrypoint']} is cairn")
    check(args[:1] == ["train"], f"{name}: arguments {args} do not start with `train`")
    flags = train_help()
    for a in args[1:]:
        if a.startswith("--"):
            check(a.split("=", 1)[0] in flags, f"{name}: `cairn train --help` lists no flag {a}")
    check(c["image"].partition(":")[0] == "cairn", f"{name}: image {c['image']}, expected the placeholder cairn")
    sc = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
    check(sc.get("runAsNonRoot") is True and sc.get("runAsUser") == image["uid"],
          f"{name}: not run as the image's user {image['uid']}")
    check(sc.get("allowPrivilegeEscalation") is False and sc.get("capabilities", {}).get("drop") == ["ALL"]
          and sc.get("readOnlyRootFilesystem") is True,
          f"{name}: privilege escalation, capabilities or a writable root file system")
    # The config: a mounted ConfigMap key that parses, publishing where the replicas serve from.
    config = arg_value(args, "--config") or ""
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mount = next((m for p, m in mounts.items() if config.startswith(p.rstrip("/") + "/")), None)
    source = volumes.get(mount["name"], {}).get("configMap", {}).get("name") if mount else None
    data = config_maps(resources).get(source, {})
    key = config[len(mount["mountPath"].rstrip("/")) + 1:] if mount else ""
    if not check(key in data, f"{name}: --config {config} is no key of a mounted ConfigMap"):
        return
    try:
        train = tomllib.loads(data[key])
    except tomllib.TOMLDecodeError as e:
        check(False, f"ConfigMap/{source} {key}: not TOML: {e}")
        return
    output = train.get("output", {})
    serving = env_of(deployment["spec"]["template"]["spec"]["containers"][0]).get("CAIRN_MODEL_REPOSITORY")
    check(output.get("repository") == serving,
          f"ConfigMap/{source} {key}: output.repository {output.get('repository')!r} is not the replicas' "
          f"CAIRN_MODEL_REPOSITORY {serving!r}")
    writable = [p for p, m in mounts.items() if not m.get("readOnly")]
    for what, path in (("output.runs_dir", output.get("runs_dir", "state/runs")), ("TMPDIR (/tmp)", "/tmp")):
        check(any(path == p or path.startswith(p.rstrip("/") + "/") for p in writable),
              f"{name}: {what} {path} is on no writable volume (the root file system is read-only)")
    data_path = train.get("data", {}).get("path")
    if data_path:
        local = next((src + data_path[len(dst):] for dst, src in image["copies"].items()
                      if data_path.startswith(dst.rstrip("/") + "/")), None)
        check(local and os.path.isfile(local), f"ConfigMap/{source} {key}: data.path {data_path} is not in the image")
    print(f"  {name}: `cairn train` as uid {image['uid']}, --config from ConfigMap/{source}, publishing to "
          f"{output.get('repository')} (the replicas' repository); gate refusals fail the Job")


class Moto:
    """An S3 server (moto) on 127.0.0.1 with the object-store component's bucket, standing in for
    the bucket and the Secret `cairn-object-store` (`env`: its keys and the endpoint)."""

    def __enter__(self):
        import logging

        import boto3
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.env = {"AWS_ACCESS_KEY_ID": "check", "AWS_SECRET_ACCESS_KEY": "check-secret",
                    "AWS_ENDPOINT": f"http://{host}:{port}", "AWS_ALLOW_HTTP": "true"}
        self.s3 = boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT"], region_name="eu-west-1",
                               aws_access_key_id="check", aws_secret_access_key="check-secret")
        self.s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        return self

    def __exit__(self, *_):
        self.server.stop()


def run_training_job(resources, image, work, store):
    """The CronJob's container as its pod starts it (config from the ConfigMap, paths mapped onto
    this machine, the bucket on moto): it must publish version 1 of its model to the bucket,
    complete (the model file last), for the replicas to serve."""
    job = next(d for _, d in resources if d["kind"] == "CronJob")
    label = f"CronJob/{job['metadata']['name']}"
    print(f"== `cairn train` as {label} runs it")
    pod = pod_spec(job)
    container = pod["containers"][0]
    files = PodFiles(work, container, pod, image, config_maps(resources))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "AWS_"))}
    env.update(store.env)
    env.update({k: files.local(v) for k, v in env_of(container).items() if v is not None})
    env["TMPDIR"] = files.local("/tmp")
    args = [files.local(a) for a in container["args"]]
    # The config names paths in the pod (the image's data, the state volume): mapped here too.
    config = arg_value(args, "--config")
    with open(config) as f:
        text = f.read()
    with open(config, "w") as f:
        f.write(re.sub(r'"(/[^"]*)"', lambda m: json.dumps(files.local(m.group(1))), text))
    t0 = time.time()
    out = subprocess.run([BINARY, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    took = time.time() - t0
    published = next((line for line in out.stdout.splitlines() if line.startswith("published ")), "")
    if not check(out.returncode == 0 and published.startswith(f"published s3://{BUCKET}/"),
                 f"{label}: exit {out.returncode}, expected a published version:\n{out.stdout}{out.stderr[-2000:]}"):
        return
    model = published.split("/")[-2]
    keys = sorted(o["Key"] for o in store.s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))
    prefix = published[len(f"published s3://{BUCKET}/"):]
    check(f"{prefix}/model.onnx" in keys and not any(".pending" in k for k in keys),
          f"{label}: the bucket does not hold a complete {prefix}: {keys}")
    print(f"  exit 0 in {took:.1f} s: {published}; {model}'s config.toml and version in the bucket")


# --------------------------------------------------------------------------------------------
# 6. The real server, as each container starts it
# --------------------------------------------------------------------------------------------

def tree_state(path):
    state = {}
    for dirpath, dirs, names in os.walk(path):
        for n in dirs + names:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            state[os.path.relpath(p, path)] = (st.st_size, st.st_mtime_ns)
    return state


class PodFiles:
    """A container's file system mapped onto this machine: the image's paths onto the
    repository, each volume onto a temporary directory (Secrets with their items written)."""

    def __init__(self, work, container, pod, image, config_maps=None):
        self.map = {}
        self.secrets = {}
        for dst, src in image["copies"].items():
            self.map[dst] = src
        self.map[image["workdir"]] = ROOT
        for v in image["volumes"]:
            self.map[v] = tempfile.mkdtemp(prefix="image-volume-", dir=work)
        self.map["/mnt/models"] = os.path.join(ROOT, "models")  # KServe's storage initializer
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for m in container.get("volumeMounts", []):
            vol = volumes.get(m["name"], {})
            local = tempfile.mkdtemp(prefix=f"volume-{m['name']}-", dir=work)
            if "secret" in vol:
                for item in vol["secret"].get("items", []):
                    value = secrets.token_hex(32)
                    with open(os.path.join(local, item["path"]), "w") as f:
                        f.write(value + "\n")
                    self.secrets[os.path.join(m["mountPath"], item["path"])] = value
            elif "configMap" in vol:
                data = (config_maps or {}).get(vol["configMap"]["name"], {})
                check(data, f"volume {m['name']}: no ConfigMap {vol['configMap']['name']} among the manifests")
                for key, text in data.items():
                    with open(os.path.join(local, key), "w") as f:
                        f.write(text)
            elif "persistentVolumeClaim" in vol:
                # The models-pvc component's claim holds a model repository: the example one.
                local = os.path.join(ROOT, "models")
            self.map[m["mountPath"]] = local

    def local(self, value):
        for prefix in sorted(self.map, key=len, reverse=True):
            if value == prefix or value.startswith(prefix.rstrip("/") + "/"):
                return self.map[prefix] + value[len(prefix.rstrip("/")):]
        return value


def effective_settings(log):
    for line in log:
        if "effective settings" in line:
            pairs = re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", line.split("effective settings", 1)[1])
            return {k: v.strip('"') for k, v in pairs}
    return None


def index(server, token=None):
    """POST /v2/repository/index (a management call), with `token` as the bearer if given."""
    return server.call("POST", "/v2/repository/index", b"{}", {"Authorization": f"Bearer {token}"} if token else {})


def grpc_ready(address):
    """ServerLive and ServerReady of the V2 gRPC service, with Triton's own client."""
    import tritonclient.grpc as grpcclient  # only where the build serves gRPC

    client = grpcclient.InferenceServerClient(address)
    try:
        return client.is_server_live() and client.is_server_ready()
    except Exception as e:  # noqa: BLE001 - any error of the client is the finding
        print(f"  gRPC client: {e}")
        return False
    finally:
        client.close()


def run_container(label, container, pod, image, work, metrics_path, grpc, secret_env=None, serves=()):
    """`secret_env`: what the container's `envFrom` Secrets hold here (the object store's
    keys and endpoint). `serves`: (model, version) the server must serve once ready."""
    print(f"== the server as {label} starts it")
    files = PodFiles(work, container, pod, image)
    manifest_env = env_of(container)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "AWS_"))}
    env.update(secret_env or {})
    env.update({k: files.local(v) for k, v in manifest_env.items() if v is not None})
    # A free port on loopback instead of the pod's 0.0.0.0 ports (flags win over the environment).
    env["CAIRN_GRPC_LISTEN"] = "127.0.0.1:0"
    args = []
    for a in container.get("args", image["cmd"]):
        flag, eq, value = a.partition("=")
        if flag in ("--listen", "--grpc-listen") and eq:
            a = f"{flag}=127.0.0.1:0"
        elif eq:
            a = f"{flag}={files.local(value)}"
        args.append(a)
    if arg_value(args, "--listen") is None:
        args += ["--listen", "127.0.0.1:0"]
    repo = files.local(arg_value(args, "--model-repository") or manifest_env.get("CAIRN_MODEL_REPOSITORY")
                       or os.path.join(image["workdir"], "models"))
    before = tree_state(repo)
    compared, probes, served, admin = 0, [], "", ""
    # The image's WORKDIR (/opt/cairn) is the repository root here: configs/server.toml is read
    # the same way. The command line is the manifest's, as it is.
    server = Server(BINARY, None, *args, env=env, inherit=False, cwd=ROOT, grpc=grpc, wait=0)
    try:
        if not check(server.started(60), f"{label}: the server did not start:\n" + "".join(server.log[-20:])):
            return
        ready = container["readinessProbe"]["httpGet"]["path"]
        try:
            server.wait_ready(path=ready, timeout=READY_TIMEOUT_S)
        except RuntimeError:
            check(False, f"{label}: {ready} not 200 within {READY_TIMEOUT_S} s:\n" + "".join(server.log[-20:]))
            return
        # The settings the server reports are the manifest's.
        settings = effective_settings(server.log)
        if check(settings is not None, f"{label}: no 'effective settings' log line"):
            given = [(var, var[len("CAIRN_"):].lower(), value) for var, value in manifest_env.items()
                     if var.startswith("CAIRN_")]
            given += [(a, a[2:].partition("=")[0].replace("-", "_"), a.partition("=")[2])
                      for a in container.get("args", []) if a.startswith("--") and "=" in a]
            for name, key, value in given:
                if key == "admin_token_file":
                    key, value = "admin_token", "<set>"
                if key in settings and key not in ("listen", "grpc_listen"):
                    compared += 1
                    want = files.local(value)
                    if key == "model_repository" and "://" in value:
                        # An object store: the server serves its mirror in the state directory.
                        want = os.path.join(files.local(manifest_env["CAIRN_STATE_DIR"]), "repository")
                    check(settings[key] == want,
                          f"{label}: {name}={value}, but the server runs with {key}={settings[key]}")
        for model, version in serves:
            status, _, body = server.call("GET", f"/v2/models/{model}/versions/{version}/ready")
            check(status == 200, f"{label}: {model} {version} is not served: {status} {body}")
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            path = container[kind]["httpGet"]["path"]
            status, _, body = server.call("GET", path)
            check(status == 200, f"{label}: {kind} {path} answered {status}: {body}")
            probes.append(f"{kind} {path}")
        # The gRPC listener (on the container's grpc port in the pod) serves the V2 service.
        served = "no gRPC in this build"
        if grpc:
            check(grpc_ready(server.grpc), f"{label}: gRPC ServerLive/ServerReady not true on {server.grpc}")
            served = f"gRPC ServerReady on {server.grpc}"
        status, _, body = server.call("GET", metrics_path)
        check(status == 200 and "cairn_build_info" in body,
              f"{label}: {metrics_path} answered {status} without a token")
        # The management API wants the token the container was given.
        status, _, _ = index(server)
        check(status == 401, f"{label}: the repository index without a token answered {status}, expected 401")
        token_file = manifest_env.get("CAIRN_ADMIN_TOKEN_FILE")
        if token_file in files.secrets:
            status, _, _ = index(server, files.secrets[token_file])
            check(status == 200, f"{label}: the repository index with the Secret's token answered {status}")
            admin = "the Secret's token opens it"
        else:
            status, _, _ = index(server, secrets.token_hex(16))
            check(status == 403, f"{label}: the repository index with a guessed token answered {status}, expected 403")
            admin = "no token opens it"
    except (OSError, http.client.HTTPException) as e:
        check(False, f"{label}: {e!r}")
    finally:
        t0 = time.time()
        code = server.stop(timeout=shutdown_timeout(manifest_env) + 5)
        stopped = time.time() - t0
    shutdown = shutdown_timeout(manifest_env)
    check(code == 0, f"{label}: exit status {code} after SIGTERM")
    check(stopped <= shutdown,
          f"{label}: {stopped:.1f} s from SIGTERM to exit, beyond CAIRN_SHUTDOWN_TIMEOUT_S {shutdown}")
    check(tree_state(repo) == before,
          f"{label}: the server wrote into the model repository {repo}, read-only in the pod")
    print(f"  {compared} settings as in the manifest; {', '.join(probes)}: 200; {served}; {metrics_path} 200 "
          f"without a token; management API 401 without a token, {admin}; model repository untouched; "
          f"SIGTERM: exit {code} in {stopped:.1f} s")


# --------------------------------------------------------------------------------------------

def vendor(crd_path, out_path, repository, tag, commit, path):
    """Writes the served, stored version's schema of a CRD, with where it came from."""
    raw = open(crd_path, "rb").read()
    crd = yaml.safe_load(raw)
    (version,) = [v for v in crd["spec"]["versions"] if v.get("served") and v.get("storage")]
    blob = hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()
    doc = {
        "source": {"repository": repository, "tag": tag, "commit": commit, "path": path, "git_blob": blob,
                   "sha256": hashlib.sha256(raw).hexdigest(), "license": "Apache-2.0"},
        "crd": crd["metadata"]["name"], "group": crd["spec"]["group"], "kind": crd["spec"]["names"]["kind"],
        "version": version["name"], "scope": crd["spec"]["scope"],
        "openAPIV3Schema": version["schema"]["openAPIV3Schema"],
    }
    with open(out_path, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


def main():
    if len(sys.argv) == 8 and sys.argv[1] == "--vendor":
        vendor(*sys.argv[2:])
        return
    if not os.access(BINARY, os.X_OK):
        sys.exit(f"no server binary at {BINARY} (cargo build, or pass its path)")
    t0 = time.time()
    lint()

    print(f"== schemas: built-in kinds with kubernetes-validate {kubernetes_validate.__version__} (strict, Kubernetes "
          f"{', '.join(KUBERNETES_VERSIONS)}), custom resources with their vendored CRDs")
    schemas = load_crd_schemas()
    for (_, kind), (vendored, _) in sorted(schemas.items()):
        s = vendored["source"]
        print(f"  {kind}: {vendored['crd']} {vendored['version']} from {s['repository']} {s['tag']} ({s['path']})")
    base = read_kustomization(os.path.join(DEPLOY, "kubernetes"))
    components = {n: read_kustomization(os.path.join(DEPLOY, "kubernetes", n)) for n in COMPONENTS}
    check(base["kind"] == "Kustomization" and all(c["kind"] == "Component" for c in components.values()),
          f"deploy/kubernetes is a Kustomization and {', '.join(COMPONENTS)} are Components")
    kserve_dir = os.path.join(DEPLOY, "kserve")
    kserve = [(os.path.join(kserve_dir, n), d) for n in sorted(os.listdir(kserve_dir)) if n.endswith(".yaml")
              for d in load_docs(os.path.join(kserve_dir, n))]
    added = [r for c in components.values() for r in c["resources"]]
    docs = [(where(p, d), d) for p, d in base["resources"] + added + kserve]
    builtin, custom = validate_all(docs, schemas)

    # Each component applied to the base, as kustomize would.
    deployment = next((d for _, d in base["resources"] if d["kind"] == "Deployment"), None)
    patched = {}
    for n, component in components.items():
        patched[n] = deployment
        for path, ops, target in component["patches"]:
            check(target.get("kind") == "Deployment" and target.get("name") == deployment["metadata"]["name"]
                  and f"{target.get('group')}/{target.get('version')}" == deployment["apiVersion"],
                  f"{rel(path)}: target {target} is not the base Deployment")
            patched[n] = json_patch(patched[n], ops, rel(path))
        validate_all([(f"Deployment with the {n} component", patched[n])], schemas)
    print(f"  {builtin + len(patched)} built-in objects (the patched Deployments included), {custom} custom resources")

    render(base, components, patched)
    consistency(base["resources"], kserve)
    training_job(patched["object-store"], components["object-store"]["resources"])

    image = read_dockerfile()
    grpc = "CAIRN_GRPC_LISTEN" in serve_help()[1]
    work = tempfile.mkdtemp(prefix="check-deploy-", dir=os.path.join(ROOT, "target"))
    try:
        pod = deployment["spec"]["template"]["spec"]
        run_container("the Deployment", pod["containers"][0], pod, image, work, "/metrics", grpc)
        ppod = patched["models-pvc"]["spec"]["template"]["spec"]
        run_container("the Deployment with models-pvc", ppod["containers"][0], ppod, image, work, "/metrics", grpc)
        with Moto() as store:
            run_training_job(components["object-store"]["resources"], image, work, store)
            opod = patched["object-store"]["spec"]["template"]["spec"]
            run_container("the Deployment with object-store", opod["containers"][0], opod, image, work, "/metrics",
                          grpc, secret_env=store.env, serves=[("iris", 1)])
        runtime = next(d for _, d in kserve if d["kind"] == "ClusterServingRuntime")
        kc = next(c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container")
        run_container("the KServe runtime", kc, runtime["spec"], image, work,
                      runtime["spec"]["annotations"]["prometheus.kserve.io/path"], grpc)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    took = time.time() - t0
    finish(f"deploy checks passed in {took:.0f} s", f"check(s) failed ({took:.0f} s)")


if __name__ == "__main__":
    main()
