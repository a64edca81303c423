"""deploy/: what can be checked without Docker, a GPU or the network.

The release pin (ARG TRITON_RELEASE in deploy/Dockerfile) and the TensorRT it ships (ARG
TENSORRT_VERSION, = the `tensorrt` pin of pyproject's `gpu` extra) must agree everywhere, because a
TensorRT plan loads only in the TensorRT that built it. The Kubernetes manifests must wire the
probes, ports, GPU, metrics annotations and the read-only model repository the way the server
command (explicit model control, strict readiness) expects, render with kustomize (kubectl, or the Python
renderer below where kubectl is missing) and pass the Kubernetes JSON schemas offline (kubernetes-validate
bundles them). requirements/setup.lock must pin exactly, with hashes, everything scripts/setup.sh installs.
"""
from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from export.repository import DEFAULT_ENGINE_CACHE, IMAGE_PACKAGES
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
BUILD_PLANS = DEPLOY / "build_plans.sh"
README = DEPLOY / "README.md"
PYPROJECT = ROOT / "pyproject.toml"

K8S_MANIFESTS = ["deployment.yaml", "service.yaml", "pvc.yaml", "networkpolicy.yaml", "pdb.yaml", "hpa.yaml",
                 "kustomization.yaml"]
FILES = ["Dockerfile", "Dockerfile.dockerignore", "build_plans.sh", "trt_version.py", "README.md",
         *(f"kubernetes/{name}" for name in K8S_MANIFESTS), "kubernetes/prometheus-adapter/config.yaml"]
# The container's ports (the interface with deploy/Dockerfile and serving/supervisor.py): Triton's three and
# the supervisor's health endpoints. Clients need only the first two.
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002, "health": 8003}
CLIENT_PORTS = ("http", "grpc")
CLIENT_LABEL = "phoenix.x/client"                  # networkpolicy.yaml: pods that may call the inference ports
ENGINE_CACHE = DEFAULT_ENGINE_CACHE               # PHOENIX_ENGINE_CACHE: ONNX Runtime's TensorRT engine cache
ADMIN_SECRET, ADMIN_SECRET_KEY = "phoenix-admin-key", "admin-key"   # PHOENIX_ADMIN_KEY's Secret and key
ADMIN_KEY_FILE = "admin-key.env"                   # the operator's file for kustomize's secretGenerator
TRITON_EXIT_TIMEOUT_DEFAULT = 30                   # tritonserver --exit-timeout-secs when not given
AUTOSCALER_SERIES = "nv_inference_queue_duration_us"   # the Triton counter behind hpa.yaml's metric
# Validated against the oldest Kubernetes the manifests target (README, "Kubernetes defaults") and the newest
# schemas kubernetes-validate bundles.
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
LOCK = ROOT / "requirements" / "setup.lock"
LOCKED_EXTRAS = ("cpu", "test")                    # what scripts/setup.sh installs besides the base dependencies
RELEASE = ROOT / "benchmarks" / "results" / "release" / "release.json"
GIB = 1 << 30
ORT_VARIANTS = re.compile(r"^onnxruntime(?:[-_](?:gpu|directml|openvino|training|qnn))?$")


# ------------------------------------------------------------------------------------------ helpers

def trt_version_module():
    spec = importlib.util.spec_from_file_location("deploy_trt_version", DEPLOY / "trt_version.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def global_args() -> dict[str, str]:
    """ARG defaults declared before the first FROM (the ones FROM can use)."""
    args = {}
    for word, rest in instructions():
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name.strip()] = value.strip().strip("\"'")
    return args


def pins() -> dict[str, str]:
    return trt_version_module().read_pins(DOCKERFILE)


def server_command() -> list[str]:
    cmds = [rest for word, rest in instructions() if word == "CMD"]
    assert len(cmds) == 1, f"expected one CMD in {DOCKERFILE}, found {len(cmds)}"
    cmd = json.loads(cmds[0])   # exec form: a JSON array
    assert isinstance(cmd, list) and all(isinstance(c, str) for c in cmd)
    return cmd


def tritonserver_argv() -> list[str]:
    """The tritonserver words of the CMD, as the shell will split them."""
    cmd = server_command()
    text = cmd[2] if cmd[:2] == ["/bin/sh", "-c"] else " ".join(shlex.quote(c) for c in cmd)
    words = shlex.split(text)
    assert "tritonserver" in words, f"CMD does not run tritonserver: {cmd}"
    return words[words.index("tritonserver"):]


def pyproject() -> dict:
    return tomllib.loads(PYPROJECT.read_text())


def requirement(spec: str) -> tuple[str, str]:
    """(normalized name, rest) of a PEP 508 requirement string."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$", spec)
    assert m, spec
    return re.sub(r"[-_.]+", "-", m.group(1)).lower(), m.group(3).strip()


def ort_variants(requirements) -> set[str]:
    return {name for name, _ in map(requirement, requirements) if ORT_VARIANTS.match(name)}


def manifests(name: str) -> list[dict]:
    docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None]
    assert docs, f"{name} holds no YAML document"
    return docs


def one(name: str, kind: str) -> dict:
    docs = [d for d in manifests(name) if d.get("kind") == kind]
    assert len(docs) == 1, f"expected one {kind} in {name}, found {len(docs)}"
    return docs[0]


def deployment() -> dict:
    return one("deployment.yaml", "Deployment")


def server_container() -> dict:
    containers = deployment()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the Deployment should run exactly the tritonserver container"
    return containers[0]


def resolve_port(port, container: dict) -> int:
    """A probe's / Service's port as a number (named ports resolved against the container)."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"port {port!r} is not a named containerPort ({named})"
    return named[port]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def quantity(text) -> float:
    """A Kubernetes memory/storage quantity in bytes (the binary and decimal suffixes used here)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(text))
    assert m, f"not a quantity: {text!r}"
    scale = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[m.group(2)]
    return float(m.group(1)) * scale


def release() -> dict:
    return json.loads(RELEASE.read_text())


def adapter_config() -> dict:
    return yaml.safe_load((K8S / "prometheus-adapter" / "config.yaml").read_text())


def lock_entries() -> dict[str, tuple[str, list[str]]]:
    """{normalized name: (version, [sha256:...])} of requirements/setup.lock; every requirement must be
    name==version (no ranges, URLs or editable installs)."""
    entries, current = {}, None
    for line in LOCK.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if not line.startswith(" "):
            m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*\\?", text)
            assert m, f"{LOCK.name}: not an exact pin: {text!r}"
            current = canonicalize_name(m.group(1))
            assert current not in entries, f"{LOCK.name}: {current} twice"
            entries[current] = (m.group(2), [])
            continue
        hashes = re.findall(r"--hash=(\S+)", text)
        assert hashes and current, f"{LOCK.name}: unexpected line {text!r}"
        entries[current][1].extend(h.rstrip("\\").strip() for h in hashes)
    return entries


# ------------------------------------------------------------------------------------------ kustomize

# What render_python implements of kustomize: local resource files and secretGenerator with the name hash off.
# Anything else in a kustomization is refused by name, never ignored; kubectl renders it where it is installed.
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "secretGenerator"}
SECRET_GENERATOR_KEYS = {"name", "envs", "files", "literals", "type", "options"}


def render_python(folder: Path) -> list[dict]:
    """`kubectl kustomize folder` for the features deploy/kubernetes uses."""
    kust_path = folder / "kustomization.yaml"
    kust = yaml.safe_load(kust_path.read_text())
    unknown = sorted(set(kust) - KUSTOMIZATION_KEYS)
    if unknown:
        raise ValueError(f"{kust_path}: {', '.join(unknown)} not implemented by the Python renderer "
                         "(implement it in tests/test_deploy.py, or render with kubectl)")
    docs = []
    for name in kust.get("resources", []):
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{kust_path}: resource {name} is not a file in {folder}")
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    docs += [_generated_secret(folder, gen) for gen in kust.get("secretGenerator", [])]
    return docs


def _generated_secret(folder: Path, gen: dict) -> dict:
    unknown = sorted(set(gen) - SECRET_GENERATOR_KEYS)
    if unknown:
        raise ValueError(f"secretGenerator {gen.get('name')}: {', '.join(unknown)} not implemented")
    if gen.get("options") != {"disableNameSuffixHash": True}:
        raise ValueError(f"secretGenerator {gen.get('name')}: only options {{disableNameSuffixHash: true}} is "
                         "implemented (kustomize's name hash and the rewriting of references to it are not)")
    data: dict[str, bytes] = {}
    for name in gen.get("envs", []):
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"secretGenerator {gen['name']}: {path} does not exist")
        for line in path.read_text().splitlines():
            text = line.lstrip()
            if not text or text.startswith("#"):
                continue
            key, sep, value = text.partition("=")
            if not sep:
                raise ValueError(f"{path}: {line!r} is not KEY=VALUE")
            data[key] = value.encode()
    for literal in gen.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value.encode()
    for spec in gen.get("files", []):
        key, sep, name = spec.partition("=")
        path = folder / (name if sep else spec)
        data[key if sep else path.name] = path.read_bytes()
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": gen["name"]},
            "type": gen.get("type", "Opaque"), "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def render_kubectl(folder: Path) -> list[dict]:
    run = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {folder} failed: {run.stderr.strip()}")
    return [d for d in yaml.safe_load_all(run.stdout) if d is not None]


RENDERERS = {"python": render_python, "kubectl": render_kubectl}
RENDERER_PARAMS = [
    "python",
    pytest.param("kubectl", marks=pytest.mark.skipif(shutil.which("kubectl") is None,
                                                     reason="kubectl not installed (the python renderer runs)")),
]


def validate_resource(doc: dict, version: str) -> None:
    """Strict: an unknown or misplaced field is an error (the API server would drop it without a word)."""
    kubernetes_validate.validate(doc, version, strict=True)


# The Prometheus adapter's configuration file, written from its Go types (kubernetes-sigs/prometheus-adapter,
# pkg/config/config.go: MetricsDiscoveryConfig, DiscoveryRule, ResourceMapping, NameMapping, ...). The adapter
# loads it with yaml.UnmarshalStrict, so unknown keys are errors there as well; the fields a rule cannot work
# without are required here.
_STRING = {"type": "string"}
_RESOURCE_MAPPING = {
    "type": "object", "additionalProperties": False,
    "properties": {"template": _STRING,
                   "overrides": {"type": "object", "additionalProperties": {
                       "type": "object", "additionalProperties": False, "required": ["resource"],
                       "properties": {"group": _STRING, "resource": {"type": "string", "minLength": 1}}}}},
}
_DISCOVERY_RULE = {
    "type": "object", "additionalProperties": False,
    "required": ["seriesQuery", "resources", "name", "metricsQuery"],
    "properties": {
        "seriesQuery": {"type": "string", "minLength": 1},
        "seriesFilters": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1,
            "properties": {"is": _STRING, "isNot": _STRING}}},
        "resources": _RESOURCE_MAPPING,
        "name": {"type": "object", "additionalProperties": False, "properties": {"matches": _STRING, "as": _STRING}},
        "metricsQuery": {"type": "string", "minLength": 1},
        "labelValueReplacements": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "properties": {"find": _STRING, "replace": _STRING}}},
    },
}
_RESOURCE_RULE = {
    "type": "object", "additionalProperties": False,
    "properties": {"containerQuery": _STRING, "nodeQuery": _STRING, "resources": _RESOURCE_MAPPING,
                   "containerLabel": _STRING},
}
ADAPTER_CONFIG_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object", "additionalProperties": False, "required": ["rules"],
    "properties": {
        "rules": {"type": "array", "minItems": 1, "items": _DISCOVERY_RULE},
        "externalRules": {"type": "array", "items": _DISCOVERY_RULE},
        "resourceRules": {"type": "object", "additionalProperties": False,
                          "properties": {"cpu": _RESOURCE_RULE, "memory": _RESOURCE_RULE, "window": _STRING}},
    },
}


# ------------------------------------------------------------------------------------------ files

@pytest.mark.parametrize("name", FILES)
def test_every_file_exists(name):
    path = DEPLOY / name
    assert path.is_file(), f"missing {path}"
    assert path.read_text().strip(), f"{path} is empty"


def test_build_plans_is_an_executable_bash_script():
    assert BUILD_PLANS.read_text().startswith("#!/usr/bin/env bash\n")
    assert os.access(BUILD_PLANS, os.X_OK), "deploy/build_plans.sh must be executable (chmod +x)"
    assert "set -euo pipefail" in BUILD_PLANS.read_text()


# ------------------------------------------------------------------------------------------ the pins

def test_base_image_uses_the_pinned_release_variable():
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert froms == ["nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3"], froms
    release = global_args().get("TRITON_RELEASE")
    assert release and re.fullmatch(r"\d{2}\.\d{2}", release), \
        f"ARG TRITON_RELEASE=<yy.mm> must be declared with a default before FROM, got {release!r}"


def test_the_release_is_written_in_one_place():
    release = global_args()["TRITON_RELEASE"]
    assert pins()["TRITON_RELEASE"] == release, "deploy/trt_version.py reads another release than FROM uses"
    # No instruction of the Dockerfile other than its ARG spells the release out.
    literal = [(w, r) for w, r in instructions() if release in r and not (w == "ARG" and r.startswith("TRITON_RELEASE="))]
    assert not literal, f"the release {release} is hard-coded outside ARG TRITON_RELEASE: {literal}"
    # build_plans.sh reads it from the Dockerfile instead of repeating it.
    script = BUILD_PLANS.read_text()
    assert release not in script, "deploy/build_plans.sh repeats the release; read it from the Dockerfile"
    assert re.search(r"ARG \$1=|ARG TRITON_RELEASE", script), "build_plans.sh does not parse the Dockerfile's ARG"
    assert "nvcr.io/nvidia/tensorrt:${TRITON_RELEASE}-py3" in script


def test_every_mention_of_a_container_release_is_the_pinned_one():
    release = global_args()["TRITON_RELEASE"]
    for path in (DOCKERFILE, BUILD_PLANS, README, PYPROJECT, *K8S.glob("*.yaml")):
        mentioned = set(re.findall(r"\b(\d{2}\.\d{2})-py3\b", path.read_text()))
        assert mentioned <= {release}, f"{path.relative_to(ROOT)} mentions release(s) {mentioned - {release}}, " \
                                       f"the pin is {release}"


def test_dockerfile_states_the_release_and_its_tensorrt():
    release, trt = global_args()["TRITON_RELEASE"], global_args().get("TENSORRT_VERSION")
    assert trt and re.fullmatch(r"\d+\.\d+\.\d+\.\d+", trt), f"ARG TENSORRT_VERSION=<a.b.c.d> before FROM, got {trt!r}"
    comments = "\n".join(line for line in DOCKERFILE.read_text().splitlines() if line.lstrip().startswith("#"))
    assert f"tritonserver:{release}-py3" in comments and trt in comments, \
        "the comment above the pin must say which TensorRT the pinned server container ships"
    assert f"tensorrt:{release}-py3" in comments


def test_tensorrt_pin_in_pyproject_is_the_containers_tensorrt():
    trt = pins()["TENSORRT_VERSION"]
    gpu = pyproject()["project"]["optional-dependencies"]["gpu"]
    pinned = [(name, rest) for name, rest in map(requirement, gpu) if re.fullmatch(r"tensorrt(-cu\d+)?", name)]
    assert len(pinned) == 1, f"the gpu extra needs exactly one tensorrt requirement, has {pinned}"
    name, rest = pinned[0]
    assert rest == f"=={trt}", f"gpu extra pins {name}{rest}; the pinned containers ship TensorRT {trt} " \
                               f"(plans load only in the TensorRT that built them)"
    assert f"tensorrt=={trt}" in DOCKERFILE.read_text().replace("${TENSORRT_VERSION}", trt), \
        "the image's tensorrt Python package must be pinned to TENSORRT_VERSION too"


def test_pyproject_says_why_tensorrt_is_pinned():
    text = PYPROJECT.read_text()
    gpu_block = text[text.index("gpu = ["):]
    gpu_block = gpu_block[:gpu_block.index("]") + 1]
    assert "version that built" in gpu_block and "deploy/Dockerfile" in gpu_block


def test_build_plans_dry_run_builds_in_the_matching_tensorrt_container(tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    out = tmp_path / "repos" / "prod"
    env = {**os.environ, "DRY_RUN": "1"}
    run = subprocess.run([bash, str(BUILD_PLANS), str(out), "--preset", "mini"], capture_output=True,
                         text=True, env=env, timeout=30)
    assert run.returncode == 0, run.stderr
    argv = shlex.split(run.stdout)
    release, trt = pins()["TRITON_RELEASE"], pins()["TENSORRT_VERSION"]
    assert argv[:2] == ["docker", "run"] and "--gpus" in argv
    assert f"nvcr.io/nvidia/tensorrt:{release}-py3" in argv
    assert f"{out.parent}:/models" in argv, "the output's parent must be /models (export.build stages beside it)"
    assert f"TENSORRT_VERSION={trt}" in argv
    inner = argv[argv.index("-c") + 1]
    assert "-m export.build --target gpu-tensorrt --engines tensorrt --output \"/models/$NAME\"" in inner
    assert "trt_version.py check --python --strict" in inner and ".[gpu]" in inner
    assert "NAME=prod" in argv and argv[-2:] == ["--preset", "mini"]


def test_build_plans_refuses_a_missing_output():
    run = subprocess.run(["bash", str(BUILD_PLANS)], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "DRY_RUN": "1"})
    assert run.returncode != 0 and "OUTPUT" in run.stdout + run.stderr


# ------------------------------------------------------------------------------------------ trt_version.py

def test_trt_version_reads_pins_and_compares_versions(tmp_path):
    mod = trt_version_module()
    df = tmp_path / "Dockerfile"
    df.write_text('ARG TRITON_RELEASE=24.12\nARG TENSORRT_VERSION="10.7.0.23"\nFROM x:${TRITON_RELEASE}\n'
                  "ARG TRITON_RELEASE=99.99\n")
    assert mod.read_pins(df) == {"TRITON_RELEASE": "24.12", "TENSORRT_VERSION": "10.7.0.23"}
    assert mod.same_tensorrt("10.13.3.9", "10.13.3.9")
    assert mod.same_tensorrt("10.13.3", "10.13.3.9")          # libnvinfer.so.10.13.3
    assert not mod.same_tensorrt("10.13.2.6", "10.13.3.9")
    assert not mod.same_tensorrt("10.13.3.8", "10.13.3.9")
    assert not mod.same_tensorrt("10.13", "10.13.3.9")        # too vague to vouch for a plan
    with pytest.raises(ValueError):
        mod.same_tensorrt("unknown", "10.13.3.9")


def test_trt_version_check_exit_codes(monkeypatch, capsys):
    mod = trt_version_module()
    trt = pins()["TENSORRT_VERSION"]
    monkeypatch.setattr(mod, "installed_tensorrt", lambda python=False: (trt, "test"))
    assert mod.main(["--dockerfile", str(DOCKERFILE), "check"]) == 0
    monkeypatch.setattr(mod, "installed_tensorrt", lambda python=False: ("10.0.1.6", "test"))
    assert mod.main(["--dockerfile", str(DOCKERFILE), "check"]) == 1
    assert "10.0.1.6" in capsys.readouterr().err
    monkeypatch.setattr(mod, "installed_tensorrt", lambda python=False: (None, "nothing here"))
    assert mod.main(["--dockerfile", str(DOCKERFILE), "check"]) == 0
    assert mod.main(["--dockerfile", str(DOCKERFILE), "check", "--strict"]) == 2
    monkeypatch.setenv("TRT_VERSION", trt)
    monkeypatch.setattr(mod, "installed_tensorrt", trt_version_module().installed_tensorrt)
    assert mod.main(["--dockerfile", str(DOCKERFILE), "check", "--strict"]) == 0


# ------------------------------------------------------------------------------------------ pyproject extras

def test_onnxruntime_cpu_and_gpu_builds_are_never_installed_together():
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    assert not ort_variants(project["dependencies"]), \
        "onnxruntime belongs in the cpu extra, not in the base dependencies (gpu hosts install onnxruntime-gpu)"
    assert ort_variants(extras["cpu"]) == {"onnxruntime"}
    assert ort_variants(extras["gpu"]) == {"onnxruntime-gpu"}
    for name, reqs in extras.items():
        if name not in ("cpu", "gpu"):
            assert not ort_variants(reqs), f"extra {name!r} must not bring an ONNX Runtime build"


# ------------------------------------------------------------------------------------------ the image

def test_server_command_flags():
    argv = tritonserver_argv()
    for flag in ("--model-repository=/models", "--model-control-mode=explicit", "--load-model=*",
                 "--strict-readiness=true", "--exit-on-error=true",
                 "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"):
        assert flag in argv, f"{flag} missing from the server command {argv}"
    assert server_command()[2].startswith("exec python3 /opt/phoenix/supervisor.py --http-url http://127.0.0.1:8000 "
                                          "--metrics-url http://127.0.0.1:8002/metrics -- tritonserver "), \
        "exec: the supervisor gets SIGTERM and forwards it; it reads the ports the server command opens"
    assert "${TRITON_EXTRA_ARGS}" in server_command()[2]


def test_version_compatible_backend_config_is_documented_not_forced():
    text = DOCKERFILE.read_text()
    assert "--backend-config=tensorrt,version-compatible=true" in text
    assert "--trt-version-compatible" in text
    assert not any("version-compatible" in w for w in tritonserver_argv()), \
        "version-compatible=true is only for plans built with --trt-version-compatible; keep it opt-in"
    envs = " ".join(rest for word, rest in instructions() if word == "ENV")
    assert 'TRITON_EXTRA_ARGS=""' in envs


def test_python_backend_dependencies():
    runs = " ".join(rest for word, rest in instructions() if word == "RUN")
    assert '"numpy>=1.24,<2"' in runs, "numpy<2: Triton's Python backend returns empty outputs with numpy 2"
    numpy_specs = re.findall(r'numpy[<>=!~][^"\s]*', runs)
    assert numpy_specs == ["numpy>=1.24,<2"], f"one numpy requirement, below 2: {numpy_specs}"
    # The gpu-python engine host's runtime: torch + the pinned tensorrt, behind ENGINE_HOST (default on).
    assert 'engine="${TORCH_SPEC} tensorrt==${TENSORRT_VERSION}"' in runs
    assert re.fullmatch(r"torch==\d+\.\d+\.\d+", pins()["TORCH_SPEC"])
    assert ("ARG", "ENGINE_HOST=1") in instructions()
    assert "trt_version.py check --python --strict" in runs, "the image's tensorrt package must be checked too"
    assert "EXECUTION_ENV_PATH" in DOCKERFILE.read_text(), "say why a pip layer and not EXECUTION_ENV_PATH"


def test_the_builds_list_of_image_packages_is_what_the_image_installs():
    """export.build refuses a GPU repository whose Python models import a package the image lacks (issue 26: a
    gpu-python build that would serve ONNX Runtime): its list must be what the Dockerfile installs."""
    runs = " ".join(rest for word, rest in instructions() if word == "RUN")
    engine = re.sub(r"\$\{(\w+)\}", lambda m: pins()[m.group(1)], re.search(r'1\) engine="([^"]*)"', runs).group(1))
    installed = {Requirement(r).name for r in ["numpy>=1.24,<2", *engine.split()]}
    assert installed == set(IMAGE_PACKAGES)
    assert not pins().get("EXTRA_PIP_PACKAGES"), "extras are the operator's; the build assumes none"


def test_image_holds_no_project_code():
    """The repository is self-contained (export.build copies phoenix_runtime/ next to each model.py): the image
    must not shadow it with another copy of the project. It copies two stdlib-only
    scripts: the TensorRT pin check and the supervisor that is its entry point."""
    copied = [rest for word, rest in instructions() if word in ("COPY", "ADD")]
    assert copied == ["deploy/trt_version.py /opt/phoenix/trt_version.py",
                      "serving/supervisor.py /opt/phoenix/supervisor.py"], copied
    imports = re.findall(r"^(?:import|from) (\w+)", (ROOT / "serving" / "supervisor.py").read_text(), re.M)
    assert set(imports) <= set(sys.stdlib_module_names) | {"__future__"}, imports
    assert not any(word == "ENV" and "PYTHONPATH" in rest for word, rest in instructions())


def test_model_repository_is_mounted_not_baked_in():
    for word, rest in instructions():
        if word in ("COPY", "ADD"):
            assert "triton_repo" not in rest and "/models" not in rest, f"{word} {rest}: the repository is mounted"
    exposed = " ".join(rest for word, rest in instructions() if word == "EXPOSE").split()
    assert sorted(map(int, exposed)) == [8000, 8001, 8002, 8003]      # 8003: our health endpoint


def test_dockerignore_lets_in_exactly_what_the_image_copies():
    patterns = [p.strip() for p in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
                if p.strip() and not p.lstrip().startswith("#")]
    assert patterns[0] == "*", "start from nothing: the context must not carry .venv, .git or model repositories"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {rest.split()[0].rstrip("/") for word, rest in instructions() if word == "COPY"}
    assert copied <= allowed, f"COPY sources excluded from the build context: {copied - allowed}"


# ------------------------------------------------------------------------------------------ kubernetes

@pytest.mark.parametrize("name", K8S_MANIFESTS)
def test_manifests_parse(name):
    for doc in manifests(name):
        assert isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind")


def test_kustomization_applies_every_manifest():
    kust = one("kustomization.yaml", "Kustomization")
    assert sorted(kust["resources"]) == sorted(n for n in K8S_MANIFESTS if n != "kustomization.yaml"), \
        "every manifest of deploy/kubernetes belongs in kustomization.yaml's resources (and nothing else)"
    assert all((K8S / r).is_file() for r in kust["resources"])


def test_deployment_ports_probes_and_gpu():
    dep = deployment()
    assert dep["apiVersion"] == "apps/v1"
    spec = dep["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    c = server_container()
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == PORTS
    # Every probe asks the supervisor's health port, never Triton's own 8000 (which stays 200 while a model
    # is down, and knows nothing of draining).
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = c[kind]["httpGet"]
        assert get["path"] == "/v2/health/ready" and resolve_port(get["port"], c) == PORTS["health"], kind
    probe = c["livenessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 300, "restart only a pod unready for minutes"
    start = c["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 600, "the first load may build TensorRT engines"
    ready = c["readinessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] <= 15, "a down model leaves the Service quickly"
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    image = c["image"]
    assert re.search(r"/?phoenix-triton:[\w.-]+$", image) and not image.endswith(":latest")


def test_the_autoscaler_owns_the_replica_count():
    assert "replicas" not in deployment()["spec"], "with an HPA, a replicas field would reset it on every apply"


def test_shutdown_budget_fits_the_grace_period():
    """preStop sleep, then the supervisor's drain, then Triton's own drain of in-flight requests: all of it
    must end before the kubelet's SIGKILL (terminationGracePeriodSeconds counts from the start of preStop)."""
    pod = deployment()["spec"]["template"]["spec"]
    c = server_container()
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "/bin/sleep" and len(command) == 2, command
    pre_stop = int(command[1])
    drain = int(env_of(c)["PHOENIX_DRAIN_SECONDS"]["value"])
    flags = [w for w in tritonserver_argv() if w.startswith("--exit-timeout-secs=")]
    exit_timeout = int(flags[-1].split("=", 1)[1]) if flags else TRITON_EXIT_TIMEOUT_DEFAULT
    grace = pod["terminationGracePeriodSeconds"]
    assert pre_stop >= 5 and drain >= 1
    assert pre_stop + drain + exit_timeout + 10 <= grace, \
        f"preStop {pre_stop} s + drain {drain} s + Triton's exit timeout {exit_timeout} s leave under 10 s of " \
        f"the {grace} s grace period"


def test_pod_and_container_security_context():
    pod = deployment()["spec"]["template"]["spec"]
    psc, csc = pod["securityContext"], server_container()["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 1000 and psc["runAsGroup"] == 1000
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert csc["allowPrivilegeEscalation"] is False and csc.get("privileged", False) is False
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert "runAsUser" not in csc or csc["runAsUser"] == 1000
    assert pod["automountServiceAccountToken"] is False, "the server never calls the Kubernetes API"
    # The rest of the `restricted` Pod Security Standard: volume kinds, no host namespaces.
    restricted = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                  "secret"}
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= restricted, f"volume {volume['name']} is not allowed by `restricted`"
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))


def test_every_writable_path_is_an_emptydir():
    """A read-only root filesystem: /tmp, /dev/shm (memory-backed) and the engine cache are emptyDir volumes;
    the only other mount is the read-only model repository."""
    pod = deployment()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in server_container()["volumeMounts"]}
    assert set(mounts) == {"/models", "/tmp", "/dev/shm", ENGINE_CACHE}
    for path, mount in mounts.items():
        volume = volumes[mount["name"]]
        if path == "/models":
            assert mount["readOnly"] is True and "persistentVolumeClaim" in volume
        else:
            assert "emptyDir" in volume and not mount.get("readOnly"), f"{path} must be a writable emptyDir"
            assert volume["emptyDir"].get("sizeLimit"), f"{path}: an emptyDir without sizeLimit can fill the node"
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"


def test_engine_cache_is_a_per_pod_volume_at_the_agreed_path():
    """Issue 26: ONNX Runtime's TensorRT engines persist where PHOENIX_ENGINE_CACHE says, on a volume of this
    pod only (ONNX Runtime documents no locking between processes sharing a cache: deployment.yaml says why)."""
    c, pod = server_container(), deployment()["spec"]["template"]["spec"]
    assert env_of(c)["PHOENIX_ENGINE_CACHE"]["value"] == ENGINE_CACHE
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == ENGINE_CACHE)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert set(volume) == {"name", "emptyDir"}, "per pod: not a shared PersistentVolumeClaim"
    assert quantity(volume["emptyDir"]["sizeLimit"]) >= release()["build"]["repository_gib"] * 2 * GIB, \
        "engines embed the weights: room for the repository's size twice (a rebuilt engine beside the old one)"
    text = (K8S / "deployment.yaml").read_text()
    assert "not portable" in text and "locking" in text, "the comment must say why the cache is not shared"


def test_admin_key_comes_from_the_secret_and_no_key_is_committed():
    ref = env_of(server_container())["PHOENIX_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": ADMIN_SECRET, "key": ADMIN_SECRET_KEY}
    gens = one("kustomization.yaml", "Kustomization")["secretGenerator"]
    gen = next(g for g in gens if g["name"] == ADMIN_SECRET)
    assert gen["options"]["disableNameSuffixHash"] is True, "the Deployment references the plain name"
    assert gen["envs"] == [ADMIN_KEY_FILE]
    ignored = subprocess.run(["git", "check-ignore", "-q", str(K8S / ADMIN_KEY_FILE)], cwd=ROOT).returncode
    assert ignored == 0, f"deploy/kubernetes/{ADMIN_KEY_FILE} must be git-ignored"
    tracked = subprocess.run(["git", "ls-files", "deploy/kubernetes"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert f"deploy/kubernetes/{ADMIN_KEY_FILE}" not in tracked
    for name in tracked:
        if name.endswith(".yaml"):
            for doc in yaml.safe_load_all((ROOT / name).read_text()):
                assert not (doc and doc.get("kind") == "Secret"), f"{name}: a Secret with a value is committed"


def test_deployment_mounts_the_model_repository_claim_read_only():
    pod = deployment()["spec"]["template"]["spec"]
    mounts = [m for m in server_container()["volumeMounts"] if m["mountPath"] == "/models"]
    assert len(mounts) == 1 and mounts[0].get("readOnly") is True
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[0]["name"])
    claim = volume["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    pvc = one("pvc.yaml", "PersistentVolumeClaim")
    assert pvc["apiVersion"] == "v1" and pvc["metadata"]["name"] == claim["claimName"]
    assert set(pvc["spec"]["accessModes"]) <= {"ReadWriteMany", "ReadOnlyMany"}, "every replica mounts it"


def test_deployment_has_prometheus_scrape_annotations_for_the_metrics_port():
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"       # strings: Kubernetes rejects YAML booleans here
    assert annotations["prometheus.io/port"] == str(PORTS["metrics"])
    assert annotations["prometheus.io/path"] == "/metrics"
    assert all(isinstance(v, str) for v in annotations.values())


def test_resources_come_from_the_measured_release_memory():
    """deployment.yaml's comment derives the numbers from benchmarks/results/release/release.json."""
    c, pod = server_container(), deployment()["spec"]["template"]["spec"]
    rel = release()
    shm = quantity(next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"])
    request, limit = quantity(c["resources"]["requests"]["memory"]), quantity(c["resources"]["limits"]["memory"])
    assert request >= rel["serving"]["memory_after_runs"]["rss_gib"] * GIB + shm
    assert limit >= (rel["build"]["repository_gib"] + rel["serving"]["memory_after_start"]["rss_gib"]) * GIB + shm
    assert request <= limit
    assert "cpu" not in c["resources"]["limits"], "a CFS quota throttles the Python model processes"
    text = (K8S / "deployment.yaml").read_text()
    for number in (rel["serving"]["memory_after_runs"]["rss_gib"], rel["build"]["repository_gib"],
                   rel["serving"]["memory_after_start"]["rss_gib"]):
        assert f"{number} GiB" in text, f"the resources comment should name the measured {number} GiB"


def test_replicas_spread_over_gpu_nodes_and_zones():
    pod = deployment()["spec"]["template"]["spec"]
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    spread = {t["topologyKey"]: t for t in pod["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
    for t in spread.values():
        assert t["maxSkew"] == 1 and t["labelSelector"]["matchLabels"].items() <= labels.items()
    # The hard spread counts only nodes the pod may run on: GPU nodes.
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert any(e["key"] == "nvidia.com/gpu.present" for t in terms for e in t["matchExpressions"])


def test_service_exposes_only_what_clients_need():
    svc = one("service.yaml", "Service")
    assert svc["apiVersion"] == "v1"
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items(), "the Service must select the Deployment's pods"
    c = server_container()
    ports = {p["name"]: (p["port"], resolve_port(p.get("targetPort", p["port"]), c)) for p in svc["spec"]["ports"]}
    # Metrics are scraped per pod and health is the kubelet's, per pod: neither belongs behind a load balancer.
    assert ports == {name: (PORTS[name], PORTS[name]) for name in CLIENT_PORTS}


def test_network_policy_opens_each_port_to_its_own_peers_only():
    pol = one("networkpolicy.yaml", "NetworkPolicy")
    assert pol["apiVersion"] == "networking.k8s.io/v1"
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert pol["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert sorted(pol["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert pol["spec"]["egress"] == [], "no connection out of the pod"
    opened = {}
    for rule in pol["spec"]["ingress"]:
        assert rule.get("from"), f"a rule without `from` opens its ports to everyone: {rule}"
        for port in rule["ports"]:
            number = resolve_port(port["port"], server_container())
            assert number not in opened, f"port {number} in two rules"
            opened[number] = rule["from"]
    assert set(opened) == {PORTS[n] for n in CLIENT_PORTS} | {PORTS["metrics"]}, \
        "inference ports and metrics only; the kubelet reaches the health port without a rule"
    for name in CLIENT_PORTS:
        assert opened[PORTS[name]] == [{"podSelector": {"matchLabels": {CLIENT_LABEL: "true"}}}]
    assert opened[PORTS["metrics"]] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def test_disruption_budget_and_autoscaler():
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    pdb = one("pdb.yaml", "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = one("hpa.yaml", "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", deployment()["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"], "a disruption must leave a replica serving"
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    # The metric is the one the Prometheus adapter rule serves, computed from a Triton counter.
    (rule,) = adapter_config()["rules"]
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    series = re.match(r"\s*(\w+)\{", rule["seriesQuery"]).group(1)
    assert series == AUTOSCALER_SERIES and re.fullmatch(rule["name"]["matches"], series)
    assert {k: v["resource"] for k, v in rule["resources"]["overrides"].items()} == {"namespace": "namespace",
                                                                                    "pod": "pod"}
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in rule["metricsQuery"]
    assert "rate(" in rule["metricsQuery"], "a counter: its rate is the time-averaged queue"


# ------------------------------------------------------------------------------------------ offline validation

def _rendered_copy(tmp_path: Path) -> Path:
    """deploy/kubernetes copied with a throwaway admin key, as an operator would have it before applying."""
    folder = tmp_path / "kubernetes"
    shutil.copytree(K8S, folder)
    (folder / ADMIN_KEY_FILE).write_text(f"{ADMIN_SECRET_KEY}={secrets.token_hex(16)}\n")
    return folder


@pytest.mark.parametrize("renderer", RENDERER_PARAMS)
def test_the_kustomization_renders_and_every_resource_passes_the_kubernetes_schemas(renderer, tmp_path):
    docs = RENDERERS[renderer](_rendered_copy(tmp_path))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "PersistentVolumeClaim",
                            "PodDisruptionBudget", "Secret", "Service"]), kinds
    for version in K8S_VERSIONS:
        for doc in docs:
            validate_resource(doc, version)
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert secret["metadata"]["name"] == ADMIN_SECRET and set(secret["data"]) == {ADMIN_SECRET_KEY}


def test_the_python_renderer_agrees_with_kubectl(tmp_path):
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed: the Python renderer is the one the other tests used")
    folder = _rendered_copy(tmp_path)
    key = lambda d: (d["kind"], d["metadata"]["name"])
    assert sorted(render_kubectl(folder), key=key) == sorted(render_python(folder), key=key)


@pytest.mark.parametrize("renderer", RENDERER_PARAMS)
def test_a_wrong_field_fails_validation(renderer, tmp_path):
    folder = _rendered_copy(tmp_path)
    path = folder / "deployment.yaml"
    text = path.read_text()
    assert text.count("readOnlyRootFilesystem: true") == 1
    path.write_text(text.replace("readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true"))
    docs = RENDERERS[renderer](folder)
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        for doc in docs:
            validate_resource(doc, K8S_VERSIONS[0])
    # A misplaced field, valid elsewhere: a Pod-level key inside the container.
    path.write_text(text.replace("          imagePullPolicy: IfNotPresent\n",
                                 "          imagePullPolicy: IfNotPresent\n          hostNetwork: false\n"))
    with pytest.raises(kubernetes_validate.ValidationError, match="hostNetwork"):
        for doc in RENDERERS[renderer](folder):
            validate_resource(doc, K8S_VERSIONS[-1])


@pytest.mark.parametrize("renderer", RENDERER_PARAMS)
def test_the_kustomization_does_not_render_without_the_operators_key(renderer, tmp_path):
    folder = tmp_path / "kubernetes"
    shutil.copytree(K8S, folder)
    (folder / ADMIN_KEY_FILE).unlink(missing_ok=True)
    with pytest.raises((FileNotFoundError, RuntimeError), match=ADMIN_KEY_FILE.replace(".", r"\.")):
        RENDERERS[renderer](folder)


def test_the_python_renderer_refuses_what_it_does_not_implement(tmp_path):
    folder = _rendered_copy(tmp_path)
    kust = folder / "kustomization.yaml"
    kust.write_text(kust.read_text() + "namePrefix: staging-\n")
    with pytest.raises(ValueError, match="namePrefix"):
        render_python(folder)


def test_prometheus_adapter_rule_passes_its_schema():
    jsonschema.validate(adapter_config(), ADAPTER_CONFIG_SCHEMA)


def test_a_wrong_field_in_the_adapter_rule_fails_its_schema():
    config = adapter_config()
    config["rules"][0]["metricQuery"] = config["rules"][0].pop("metricsQuery")
    with pytest.raises(jsonschema.ValidationError, match="metricQuery"):
        jsonschema.validate(config, ADAPTER_CONFIG_SCHEMA)


# ------------------------------------------------------------------------------------------ the lock

def test_lock_pins_every_direct_dependency_exactly_with_hashes():
    locked = lock_entries()
    project = pyproject()["project"]
    direct = [*project["dependencies"], *(r for extra in LOCKED_EXTRAS
                                          for r in project["optional-dependencies"][extra])]
    direct += pyproject()["build-system"]["requires"]
    for spec in direct:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in locked, f"{spec!r} (pyproject.toml) is not in {LOCK.relative_to(ROOT)}"
        version, hashes = locked[name]
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version} does not satisfy {spec!r}"
    for name, (version, hashes) in locked.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), f"{name}: no sha256 hash"


def test_lock_keeps_the_cpu_torch_numpy_below_2_and_no_cuda_wheels():
    locked = lock_entries()
    torch_pin = Requirement(next(line for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
                                 if line.startswith("torch")))
    version = Version(locked["torch"][0])
    assert version.local == "cpu" and torch_pin.specifier.contains(version), f"torch=={version}: not the CPU wheel"
    assert Version(locked["numpy"][0]) < Version("2"), "Triton's Python backend returns empty outputs with numpy 2"
    cuda = sorted(n for n in locked if n.startswith("nvidia-") and n != "nvidia-pytriton")
    assert not cuda, f"CUDA wheels in the lock of a CPU machine: {cuda}"
    gpu_only = {canonicalize_name(Requirement(r).name) for r in pyproject()["project"]["optional-dependencies"]["gpu"]}
    assert not gpu_only & set(locked), f"the gpu extra is not for these machines: {gpu_only & set(locked)}"


def test_tritonserver_package_is_pinned_exactly_and_says_why():
    (spec,) = [r for r in pyproject()["project"]["dependencies"] if Requirement(r).name == "nvidia-pytriton"]
    (pin,) = Requirement(spec).specifier
    assert pin.operator == "==", "nvidia-pytriton ships the tritonserver binary: pin it exactly"
    assert lock_entries()["nvidia-pytriton"][0] == pin.version
    text = PYPROJECT.read_text()
    comment = text[:text.index('"nvidia-pytriton==')].rsplit('"', 1)[1]
    assert "tritonserver" in comment and "pinned exactly" in comment


def test_setup_installs_the_lock_with_hashes_then_the_project_alone():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    installs = [line.strip() for line in setup.splitlines() if re.match(r"\s*python -m pip install", line)]
    assert installs == ['python -m pip install -q --require-hashes --only-binary :all: -r "$LOCK"',
                        "python -m pip install -q --no-deps --no-build-isolation -e ."], installs
    assert f"LOCK={LOCK.relative_to(ROOT)}" in setup
    assert "scripts/lock.sh" in setup and "scripts/lock.sh" in LOCK.read_text().split("\n\n")[0]
    lock_sh = (ROOT / "scripts" / "lock.sh").read_text()
    assert sorted(re.findall(r"--extra (\w+)", lock_sh)) == sorted(LOCKED_EXTRAS)
    assert "--generate-hashes" in lock_sh and "--constraint requirements/constraints.txt" in lock_sh
    for script in ("setup.sh", "lock.sh"):
        assert os.access(ROOT / "scripts" / script, os.X_OK)


def test_test_extra_has_pyyaml():
    names = {name for name, _ in map(requirement, pyproject()["project"]["optional-dependencies"]["test"])}
    assert {"pyyaml", "kubernetes-validate", "jsonschema", "packaging"} <= names


# ------------------------------------------------------------------------------------------ the signal, served

def test_the_autoscalers_counter_is_served_for_every_model(demo_repo):
    """The adapter rule reads AUTOSCALER_SERIES: the served Triton exports it for every model of the
    repository, and it counts (microseconds queued) once requests arrive."""
    from serving.client import PhoenixClient
    from serving.server import TritonServer

    def series(url: str) -> dict[str, float]:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        return {m: float(v) for m, v in re.findall(rf'^{AUTOSCALER_SERIES}\{{model="([^"]+)"[^}}]*\}} (\S+)$',
                                                   text, re.M)}

    with TritonServer(demo_repo) as server:
        served = set(json.loads((Path(demo_repo) / "manifest.json").read_text())["served"])
        before = series(server.metrics_url)
        assert served <= set(before), f"{AUTOSCALER_SERIES} missing for {served - set(before)}"
        with PhoenixClient(server.grpc_url) as client:
            for _ in range(3):
                client.score(user_id=5, history=[(5, 1, "favorite", 0)], candidates=[(11, 1, 0), (12, 2, 3)])
        after = series(server.metrics_url)
    assert sum(after.values()) > sum(before.values()), "no queue time counted after three requests"


# ------------------------------------------------------------------------------------------ README

def test_readme_walks_through_the_recipe():
    text = README.read_text()
    release, trt = pins()["TRITON_RELEASE"], pins()["TENSORRT_VERSION"]
    assert f"nvcr.io/nvidia/tritonserver:{release}-py3" in text and f"nvcr.io/nvidia/tensorrt:{release}-py3" in text
    assert trt in text and f"tensorrt=={trt}" in text
    assert "curl -X POST localhost:8000/v2/repository/models/" in text and "/load" in text
    steps = [text.index(s) for s in ("## 1. Build the model repository", "## 2. Build TensorRT plans",
                                     "## 3. Build and run the server image", "## 4. Deploy to Kubernetes")]
    assert steps == sorted(steps)
    assert "deploy/build_plans.sh" in text and "kubectl apply -k deploy/kubernetes" in text
