"""Static checks of the container, the Kubernetes manifests and the CI example (no Docker engine here)."""

import json
import re

import dockerfile
import yaml

from conftest import ROOT
from eval.report import validate
from pipeline.config import load_config

SECRET_WORDS = re.compile(r"(^|_)(token|secret|password|api_?key)($|_)", re.IGNORECASE)
HUB_TOKEN = re.compile(r"hf_[A-Za-z0-9]{10,}")


def instructions():
    return dockerfile.parse_file(str(ROOT / "Dockerfile"))


def test_dockerfile_runs_as_non_root_with_the_entrypoint_and_default_1b_command():
    final_stage = []
    for ins in instructions():
        final_stage = [] if ins.cmd == "FROM" else final_stage + [ins]
    users = [ins.value[0] for ins in final_stage if ins.cmd == "USER"]
    assert users and users[-1] not in ("root", "0")
    (entrypoint,) = [ins for ins in final_stage if ins.cmd == "ENTRYPOINT"]
    assert entrypoint.json and list(entrypoint.value) == ["python", "/app/entrypoint.py"]
    (command,) = [ins for ins in final_stage if ins.cmd == "CMD"]
    assert command.json and command.value[0] == "run"
    config = command.value[command.value.index("--config") + 1]
    assert load_config(ROOT / config).model.source == "google/gemma-3-1b-it"
    (volume,) = [ins for ins in final_stage if ins.cmd == "VOLUME"]
    assert set(volume.value) == {"/cache", "/out"}


def test_dockerfile_bakes_no_secret_and_installs_like_ci():
    for ins in instructions():
        if ins.cmd in ("ENV", "ARG"):
            names = ins.value[::2] if ins.cmd == "ENV" else [v.split("=")[0] for v in ins.value]
            assert not any(SECRET_WORDS.search(name) for name in names), ins.original
            assert not HUB_TOKEN.search(ins.original), ins.original
    runs = " ".join(" ".join(ins.value) for ins in instructions() if ins.cmd == "RUN")
    copies = " ".join(" ".join(ins.value) for ins in instructions() if ins.cmd == "COPY")
    assert "make install" in runs and "constraints.txt" in copies
    assert "make install" in (ROOT / ".ci/run").read_text()
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_dockerignore_keeps_caches_outputs_and_venv_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv/", "outputs/", ".git/"} <= set(ignored)


def load_job(name):
    documents = list(yaml.safe_load_all((ROOT / "k8s" / name).read_text()))
    (job,) = [d for d in documents if d["kind"] == "Job"]
    assert job["apiVersion"] == "batch/v1"
    return job, job["spec"]["template"]["spec"]


def check_job(name, gpus):
    job, pod = load_job(name)
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
    assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "persistentVolumeClaim" in volumes[mounts["/out"]] and "persistentVolumeClaim" in volumes[mounts["/cache"]]
    token_file = {e["name"]: e.get("value") for e in container["env"]}["HF_TOKEN_FILE"]
    secret_mount = [m for m in container["volumeMounts"] if token_file.startswith(m["mountPath"])]
    assert secret_mount and "secret" in volumes[secret_mount[0]["name"]]
    assert not any(SECRET_WORDS.search(e["name"]) and "value" in e and e["name"] != "HF_TOKEN_FILE"
                   for e in container["env"])
    assert not HUB_TOKEN.search((ROOT / "k8s" / name).read_text())
    # Preempted/evicted pods are replaced and resume from the PVC; they do not use up the retry budget.
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert pod["securityContext"]["runAsNonRoot"] is True
    return container


def test_single_gpu_job():
    container = check_job("job.yaml", 1)
    assert container["args"][0] == "run"
    load_config(ROOT / container["args"][2])


def test_multi_gpu_job_starts_one_process_per_gpu():
    container = check_job("job-multigpu.yaml", 4)
    command = container["command"]
    assert command[:2] == ["accelerate", "launch"]
    assert int(command[command.index("--num_processes") + 1]) == 4
    load_config(ROOT / container["args"][2])


def test_ci_example_runs_the_job_and_gates_on_the_committed_baseline():
    workflow = yaml.safe_load((ROOT / "examples/ci-regression.yml").read_text())
    steps = [s.get("run", "") for job in workflow["jobs"].values() for s in job["steps"]]
    assert any("make install" in s for s in steps)
    assert any("entrypoint.py run --config configs/demo.yaml" in s for s in steps)
    (gate,) = [s for s in steps if "entrypoint.py compare" in s]
    assert "--baseline examples/baseline-report.json" in gate
    baseline = json.loads((ROOT / "examples/baseline-report.json").read_text(encoding="utf-8"))
    validate(baseline)
    assert baseline["config"]["model"]["source"] == "embedded:gemma-3-270m"
