"""deploy/: what can be checked without Docker, a GPU or the network.

The release pin (ARG TRITON_RELEASE in deploy/Dockerfile) and the TensorRT it ships (ARG
TENSORRT_VERSION, = the `tensorrt` pin of pyproject's `gpu` extra) must agree everywhere, because a
TensorRT plan loads only in the TensorRT that built it. The Kubernetes manifests must wire the
probes, ports, GPU, metrics annotations and the read-only model repository the way the server
command (explicit model control, strict readiness) expects.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
BUILD_PLANS = DEPLOY / "build_plans.sh"
README = DEPLOY / "README.md"
PYPROJECT = ROOT / "pyproject.toml"

FILES = ["Dockerfile", "Dockerfile.dockerignore", "build_plans.sh", "trt_version.py", "README.md",
         "kubernetes/deployment.yaml", "kubernetes/service.yaml", "kubernetes/pvc.yaml",
         "kubernetes/kustomization.yaml"]
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
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


def test_setup_installs_the_cpu_and_test_extras():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    installs = re.findall(r'pip install -q -e "\.\[([^\]]*)\]"', setup)
    assert installs == ["cpu,test"], installs
    assert "gpu" not in installs[0]


def test_test_extra_has_pyyaml():
    names = {name for name, _ in map(requirement, pyproject()["project"]["optional-dependencies"]["test"])}
    assert "pyyaml" in names


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


def test_image_holds_no_project_code():
    """The repository is self-contained (export.build copies phoenix_export/ and phoenix_serving/ next to
    each model.py): the image must not shadow those with another copy of the project. It copies two stdlib-only
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
    assert sorted(map(int, exposed)) == [8000, 8001, 8002]


def test_dockerignore_lets_in_exactly_what_the_image_copies():
    patterns = [p.strip() for p in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
                if p.strip() and not p.lstrip().startswith("#")]
    assert patterns[0] == "*", "start from nothing: the context must not carry .venv, .git or model repositories"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {rest.split()[0].rstrip("/") for word, rest in instructions() if word == "COPY"}
    assert copied <= allowed, f"COPY sources excluded from the build context: {copied - allowed}"


# ------------------------------------------------------------------------------------------ kubernetes

@pytest.mark.parametrize("name", ["deployment.yaml", "service.yaml", "pvc.yaml", "kustomization.yaml"])
def test_manifests_parse(name):
    for doc in manifests(name):
        assert isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind")


def test_kustomization_applies_every_manifest():
    kust = one("kustomization.yaml", "Kustomization")
    assert sorted(kust["resources"]) == ["deployment.yaml", "pvc.yaml", "service.yaml"]
    assert all((K8S / r).is_file() for r in kust["resources"])


def test_deployment_ports_probes_and_gpu():
    dep = deployment()
    assert dep["apiVersion"] == "apps/v1"
    spec = dep["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    c = server_container()
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == PORTS
    ready = c["readinessProbe"]["httpGet"]
    assert ready["path"] == "/v2/health/ready" and resolve_port(ready["port"], c) == 8000
    live = c["livenessProbe"]["httpGet"]
    assert live["path"] == "/v2/health/ready" and resolve_port(live["port"], c) == 8000
    probe = c["livenessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 300, "restart only a pod unready for minutes"
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    image = c["image"]
    assert re.search(r"/?phoenix-triton:[\w.-]+$", image) and not image.endswith(":latest")


def test_deployment_mounts_the_model_repository_claim_read_only():
    pod = deployment()["spec"]["template"]["spec"]
    mounts = [m for m in server_container()["volumeMounts"] if m["mountPath"] == "/models"]
    assert len(mounts) == 1 and mounts[0].get("readOnly") is True
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[0]["name"])
    claim = volume["persistentVolumeClaim"]["claimName"]
    pvc = one("pvc.yaml", "PersistentVolumeClaim")
    assert pvc["apiVersion"] == "v1" and pvc["metadata"]["name"] == claim


def test_deployment_has_prometheus_scrape_annotations_for_the_metrics_port():
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"       # strings: Kubernetes rejects YAML booleans here
    assert annotations["prometheus.io/port"] == str(PORTS["metrics"])
    assert annotations["prometheus.io/path"] == "/metrics"
    assert all(isinstance(v, str) for v in annotations.values())


def test_service_exposes_the_three_ports():
    svc = one("service.yaml", "Service")
    assert svc["apiVersion"] == "v1"
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items(), "the Service must select the Deployment's pods"
    c = server_container()
    ports = {p["name"]: (p["port"], resolve_port(p.get("targetPort", p["port"]), c)) for p in svc["spec"]["ports"]}
    assert ports == {name: (n, n) for name, n in PORTS.items()}


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
