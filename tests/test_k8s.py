"""The Kubernetes manifests (k8s/): real tooling, the rules schemas miss, and each pod's own
command run here.

There is no cluster here. Every overlay is rendered with ``kubectl kustomize``, validated with
``kubernetes-validate --strict`` for each Kubernetes version from 1.30 to the newest the tool
knows, and scanned with checkov. Then the rendered container's command, args and env (ConfigMap,
downward API, resource fields, ``$(VAR)`` expansion, as the kubelet does it) run locally, with
the pod's volumes mapped to temp folders and tiny data. The train pod runs in the built image
instead, on a real Docker engine (tests/test_image.py, through tests/k8s_docker.py).

    PYTHONPATH=src python -m pytest tests/test_k8s.py -q
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_wandb import closed_port, fake_wandb
from helpers import ROOT, SRC, offline_runs, read_offline_run

from trainjob.errors import ExitCode
from trainjob.settings import ENV_PREFIX, Settings, env_name
from trainjob.sweep.local import sweep_group

K8S = ROOT / "k8s"
OVERLAYS = ("train", "sweep-agents", "offline", "offline-sweep")
MAIN = "trainjob"  # the training container's name (podFailurePolicy rules name it)
SECRET, SECRET_KEY = "trainjob-wandb", "WANDB_API_KEY"
GPU = "nvidia.com/gpu"
# The image's exec-form ENTRYPOINT: the pods set only `args` for the trainjob container.
IMAGE_ENTRYPOINT = ("python", "-m", "trainjob")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IN_CI = bool(os.environ.get("CI"))
SWEEP_CONFIGMAP = ("trainjob-sweep", "TRAINJOB_SWEEP_ID")  # created by the user, per sweep

# What each exit code does to a Job, decided once (docs/kubernetes.md explains it). A new
# ExitCode member fails test_pod_failure_policy_matches_exit_codes until it is decided here.
EXIT_POLICY = {
    ExitCode.CRASHED: "count",  # a bug or a flaky GPU: retried up to backoffLimit
    ExitCode.DATA: "count",  # may be a failed download: retry; a missing file fails fast anyway
    ExitCode.BAD_CONFIG: "FailJob",  # the same input fails the same way
    ExitCode.DIVERGED: "FailJob",  # a fixed seed and the same config diverge again
    ExitCode.STORAGE: "FailJob",  # an unwritable or full volume stays so
    ExitCode.PREEMPTED: "Ignore",  # checkpoint written: the replacement pod resumes
    ExitCode.STOPPED: "FailJob",  # stopped from W&B on purpose: a restart would undo the stop
    ExitCode.SWEEP_GAVE_UP: "FailJob",  # trials fail in a row: a new agent burns more of them
    ExitCode.WANDB_UNREACHABLE: "count",  # an outage may pass: retried with backoff, bounded
    ExitCode.RUN_IN_USE: "count",  # the live holder may die or end: its lease expires, retry
    ExitCode.HISTORY_WITHOUT_CHECKPOINT: "FailJob",  # the checkpoint is gone for good
}
# checkov checks skipped on purpose; each carries its reason in the manifest (checkov.io/skipN).
EXPECTED_SKIPS = {"CKV_K8S_15", "CKV_K8S_35", "CKV_K8S_43"}
# Knobs a local run changes beyond the volume paths: tiny data, fast export, no W&B upload.
TINY = {
    "TRAINJOB_EPOCHS": "1",
    "TRAINJOB_DATA_SLICE": "1",
    "TRAINJOB_ONNX_EXPORTER": "torchscript",
    "WANDB_SILENT": "true",
}


def need(tool: str, path: str | None) -> str:
    """The tool's path; a missing tool skips here and fails in CI (.ci/run installs it)."""
    if path and Path(path).exists():
        return path
    message = f"{tool} not found (make test / .ci/run install it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def kubectl() -> str:
    return need("kubectl", shutil.which("kubectl"))


def render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS}


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def jobs(rendered: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for overlay, docs in rendered.items():
        for job in of_kind(docs, "Job"):
            yield overlay, job


def containers(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job["spec"]["template"]["spec"]["containers"]


def main_job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (job,) = [j for j in of_kind(docs, "Job") if containers(j)[0]["name"] == MAIN]
    return job


def sync_job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (job,) = [j for j in of_kind(docs, "Job") if containers(j)[0]["name"] == "wandb-sync"]
    return job


def claim(job: dict[str, Any]) -> str:
    """The claim a Job mounts as its workspace volume."""
    vols = job["spec"]["template"]["spec"]["volumes"]
    return next(v["persistentVolumeClaim"]["claimName"] for v in vols if v["name"] == "workspace")


def report_job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (job,) = [j for j in of_kind(docs, "Job") if containers(j)[0]["name"] == "report"]
    return job


def configmap(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"] == name]
    return cm.get("data", {})


# --- real tooling ------------------------------------------------------------------------------


def test_overlays_render_without_name_clashes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    seen: dict[tuple[str, str, str], str] = {}
    for overlay, docs in rendered.items():
        kinds = {d["kind"] for d in docs}
        assert {"Job", "ConfigMap", "NetworkPolicy"} <= kinds, overlay
        assert "Secret" not in kinds, f"{overlay} renders a Secret: it would overwrite the key"
        for doc in docs:
            key = (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])
            assert key not in seen, f"{key} in both {seen.get(key)} and {overlay}"
            seen[key] = overlay
    # All four can live in one namespace, next to the one Secret they share.
    assert {ns for _, ns, _ in seen} == {"trainjob"}


def schema_versions() -> list[str]:
    from kubernetes_validate import utils

    versions = sorted({utils.major_minor(v) for v in utils.all_versions()}, key=_version_key)
    return [v for v in versions if _version_key(v) >= (1, 30)]


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


@pytest.mark.parametrize("version", schema_versions())
def test_kubernetes_validate_strict(
    version: str, rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    files = [K8S / "base" / "secret.example.yaml"]
    for overlay, docs in rendered.items():
        files.append(tmp_path / f"{overlay}.yaml")
        files[-1].write_text(yaml.safe_dump_all(docs))
    kubernetes_validate(version, files)


def kubernetes_validate(version: str, files: list[Path]) -> None:
    tool = need("kubernetes-validate", shutil.which("kubernetes-validate", path=_venv_bin()))
    out = subprocess.run(
        [tool, "--strict", "--quiet", "-k", f"{version}.0", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_newest_schema_is_validated() -> None:
    from kubernetes_validate import utils

    assert schema_versions()[0] == "1.30"
    assert schema_versions()[-1] == utils.major_minor(utils.latest_version())


def _venv_bin() -> str:
    return str(Path(sys.executable).parent)


def checkov() -> str:
    explicit = os.environ.get("CHECKOV")  # set by the Makefile (its own venv, see there)
    if explicit:
        return need("checkov", explicit)
    local = ROOT / ".venv-checkov" / "bin" / "checkov"
    return need("checkov", str(local) if local.exists() else shutil.which("checkov"))


def checkov_argv(tool: str, folder: Path) -> list[str]:
    return [tool, "-d", str(folder), "--framework", "kubernetes", "--skip-download", "-o", "json"]


def test_checkov_passes_and_every_skip_has_a_reason(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    for overlay, docs in rendered.items():
        (tmp_path / f"{overlay}.yaml").write_text(yaml.safe_dump_all(docs))
    out = subprocess.run(
        [*checkov_argv(checkov(), tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(out.stdout)
    report = report[0] if isinstance(report, list) else report
    summary, results = report["summary"], report["results"]
    failed = [f"{r['check_id']} {r['resource']}" for r in results["failed_checks"]]
    assert summary["failed"] == 0 and not failed, failed
    assert summary["passed"] > 100  # the checks did run
    skipped = results["skipped_checks"]
    assert {s["check_id"] for s in skipped} == EXPECTED_SKIPS
    for s in skipped:
        reason = s["check_result"].get("suppress_comment") or ""
        assert len(reason) > 30, f"{s['check_id']}: no reason given"
    print(f"checkov: passed {summary['passed']}, failed 0, skipped {summary['skipped']}")


# --- rules the schemas miss ---------------------------------------------------------------------


def test_jobs_never_restart_in_place_and_fail_fast(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, job in jobs(rendered):
        spec, pod = job["spec"], job["spec"]["template"]["spec"]
        where = f"{overlay}/{job['metadata']['name']}"
        assert pod["restartPolicy"] == "Never", where
        assert isinstance(spec.get("backoffLimit"), int), where
        assert 0 < spec.get("ttlSecondsAfterFinished", 0) <= 7 * 86400, where
        assert pod.get("automountServiceAccountToken") is False, where
        if containers(job)[0]["name"] == MAIN:
            assert spec["podFailurePolicy"]["rules"], where
            assert spec.get("podReplacementPolicy") == "Failed", where  # no overlapping pods
            assert pod["terminationGracePeriodSeconds"] >= 60, where  # checkpoint + W&B flush


def test_pod_failure_policy_matches_exit_codes(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    assert set(EXIT_POLICY) == set(ExitCode) - {ExitCode.OK}, "decide the new exit code here"
    for overlay, docs in rendered.items():
        rules = main_job(docs)["spec"]["podFailurePolicy"]["rules"]
        by_code: dict[int, str] = {}
        disruption = False
        for rule in rules:
            if "onExitCodes" in rule:
                on = rule["onExitCodes"]
                assert on["containerName"] == MAIN and on["operator"] == "In", overlay
                for code in on["values"]:
                    assert code not in by_code, f"{overlay}: exit {code} in two rules"
                    by_code[code] = rule["action"]
            else:
                conditions = rule["onPodConditions"]
                assert rule["action"] == "Ignore"
                assert conditions == [{"type": "DisruptionTarget", "status": "True"}]
                disruption = True
        assert disruption, f"{overlay}: preemption/eviction must not count as a failure"
        assert set(by_code) <= {int(c) for c in ExitCode}, f"{overlay}: unknown exit code"
        for code, decision in EXIT_POLICY.items():
            assert by_code.get(int(code), "count") == decision, f"{overlay}: exit {code}"


def test_gpu_limit_and_toleration(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, job in jobs(rendered):
        pod = job["spec"]["template"]["spec"]
        for c in containers(job):
            gpus = c["resources"]["limits"].get(GPU)
            if c["name"] == MAIN:
                assert gpus == "1", overlay
                assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod[
                    "tolerations"
                ], overlay
            else:
                assert gpus is None, f"{overlay}/{c['name']} holds a GPU it does not use"


def test_resources_guaranteed_and_threads_follow_the_cpu_limit(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, job in jobs(rendered):
        for c in containers(job):
            res = c["resources"]
            assert res["requests"] == res["limits"], f"{overlay}/{c['name']}"
            assert {"cpu", "memory"} <= set(res["limits"])
            if c["name"] == MAIN:
                (omp,) = [e for e in c["env"] if e["name"] == "OMP_NUM_THREADS"]
                ref = omp["valueFrom"]["resourceFieldRef"]
                assert ref == {"containerName": MAIN, "resource": "limits.cpu", "divisor": "1"}


def test_api_key_only_from_the_secret(rendered: dict[str, list[dict[str, Any]]]) -> None:
    optional_where = {"offline", "offline-sweep"}  # training pods that never go online
    for overlay, job in jobs(rendered):
        for c in containers(job):
            names = [e["name"] for e in c.get("env", [])]
            if c["name"] == "report":  # reads files only, never W&B: it gets no key at all
                assert SECRET_KEY not in names and "secretRef" not in str(c), overlay
                continue
            assert names.count(SECRET_KEY) == 1, f"{overlay}/{c['name']}"
            (entry,) = [e for e in c["env"] if e["name"] == SECRET_KEY]
            ref = entry["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (SECRET, SECRET_KEY)
            optional = c["name"] == MAIN and overlay in optional_where
            assert ref.get("optional", False) is optional, f"{overlay}/{c['name']}"
            for e in c.get("env", []):
                if re.search(r"KEY|TOKEN|PASSWORD|SECRET", e["name"]):
                    assert "value" not in e, f"{overlay}: {e['name']} inlined"
    for overlay, docs in rendered.items():
        for cm in of_kind(docs, "ConfigMap"):
            for key in cm.get("data", {}):
                assert not re.search(r"KEY|TOKEN|PASSWORD|SECRET", key), f"{overlay}: {key}"
        text = yaml.safe_dump_all(docs)
        assert not re.search(r"\b[0-9a-f]{40}\b", text), f"{overlay}: looks like a W&B key"


def test_example_secret_holds_no_key_and_is_not_applied() -> None:
    secret = yaml.safe_load((K8S / "base" / "secret.example.yaml").read_text())
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == SECRET
    assert secret["stringData"] == {SECRET_KEY: ""} and "data" not in secret
    for kustomization in K8S.rglob("kustomization.yaml"):
        assert "secret.example.yaml" not in yaml.safe_load(kustomization.read_text()).get(
            "resources", []
        ), kustomization


def set_env_names(docs: list[dict[str, Any]]) -> set[str]:
    names = {k for cm in of_kind(docs, "ConfigMap") for k in cm.get("data", {})}
    for job in of_kind(docs, "Job"):
        for c in containers(job):
            names |= {e["name"] for e in c.get("env", [])}
    return names


def test_every_trainjob_variable_is_a_setting(rendered: dict[str, list[dict[str, Any]]]) -> None:
    fields = {env_name(f) for f in Settings.model_fields}
    for overlay, docs in rendered.items():
        names = set_env_names(docs)
        unknown = {n for n in names if n.startswith(ENV_PREFIX)} - fields
        assert not unknown, f"{overlay}: {sorted(unknown)} are not Settings fields"
        # wandb reads WANDB_SWEEP_ID itself and then overrides run ids: never set it.
        assert "WANDB_SWEEP_ID" not in names, overlay


PSS_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What Pod Security "restricted" (plus a read-only root filesystem) would refuse."""
    problems = []
    psc = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(flag)
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= PSS_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)}")
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities")
        if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser")) in (None, 0):
            problems.append(f"{name}: needs a fixed non-zero UID")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile {seccomp}")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            problems.append(f"{name}: hostPort")
    return problems


def test_security_context_is_restricted(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, job in jobs(rendered):
        pod = job["spec"]["template"]["spec"]
        assert restricted_violations(pod) == [], overlay
        assert pod["securityContext"]["runAsUser"] == 10001  # the image's user (Dockerfile USER)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
        lambda p: p["containers"][0]["securityContext"]["capabilities"].update(drop=[]),
        lambda p: p["securityContext"].update(runAsUser=0),
        lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        lambda p: p["containers"][0]["securityContext"].update(readOnlyRootFilesystem=False),
    ],
)
def test_restricted_check_catches_violations(
    mutate: Any, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    pod = json.loads(json.dumps(main_job(rendered["train"])["spec"]["template"]["spec"]))
    pod["containers"][0]["securityContext"].pop("runAsUser", None)
    mutate(pod)
    assert restricted_violations(pod)


PATH_VARS = re.compile(r"^(HOME|TMPDIR|WANDB_DIR|WANDB_\w+_DIR|TRAINJOB_\w+_DIR)$")


def test_every_written_path_is_on_a_writable_volume(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, docs in rendered.items():
        for job in of_kind(docs, "Job"):
            for c in containers(job):
                writable = [m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")]
                assert "/tmp" in writable, f"{overlay}/{c['name']}: /tmp"
                env = pod_env(docs, job, c, Pod.of(job, index=0))
                for name, value in env.items():
                    if PATH_VARS.match(name):
                        assert any(_under(value, m) for m in writable), f"{overlay}: {name}"
    shm = main_job(rendered["train"])["spec"]["template"]["spec"]["volumes"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in shm


def _under(path: str, mount: str) -> bool:
    return path == mount or path.startswith(mount.rstrip("/") + "/")


def test_labels_image_and_version(rendered: dict[str, list[dict[str, Any]]]) -> None:
    required = {"name", "part-of", "version", "managed-by", "component", "instance"}
    for overlay, job in jobs(rendered):
        for meta in (job["metadata"], job["spec"]["template"]["metadata"]):
            labels = meta["labels"]
            present = {k.removeprefix("app.kubernetes.io/") for k in labels}
            assert required <= present, f"{overlay}: {required - present}"
            assert labels["app.kubernetes.io/version"] == VERSION
            assert labels["app.kubernetes.io/instance"] == f"trainjob-{overlay}"
        for c in containers(job):
            assert c["image"] == f"ghcr.io/trainjob/trainjob:{VERSION}", overlay


def test_sweep_agents_are_a_work_queue_spread_over_nodes(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["sweep-agents"]
    job = main_job(docs)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    # completions unset: done once any agent exits 0 (the sweep ended) and all have stopped.
    assert "completions" not in spec and spec.get("completionMode", "NonIndexed") == "NonIndexed"
    assert spec["parallelism"] >= 2
    assert containers(job)[0]["args"] == ["agent"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["maxSkew"] == 1
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert spread["labelSelector"]["matchLabels"].items() <= labels.items()
    assert spread["matchLabelKeys"] == ["batch.kubernetes.io/controller-uid"]
    # The sweep id comes from a ConfigMap the user creates (as `trainjob sweep create` prints):
    # required, and never rendered here, so `kubectl apply -k` cannot overwrite it.
    env = {e["name"]: e for e in containers(job)[0]["env"]}
    ref = env["TRAINJOB_SWEEP_ID"]["valueFrom"]["configMapKeyRef"]
    assert (ref["name"], ref["key"]) == SWEEP_CONFIGMAP and not ref.get("optional")
    assert SWEEP_CONFIGMAP[0] not in {d["metadata"]["name"] for d in docs}
    from trainjob.sweep.agent import agent_commands

    printed = "\n".join(agent_commands("entity/project/abc123"))
    assert f"configmap {ref['name']} " in printed, printed
    assert f"--from-literal={ref['key']}=entity/project/abc123" in printed, printed
    assert "kubectl apply -k k8s/overlays/sweep-agents" in printed, printed
    # ... in the namespace the agents run in, or they wait for it forever.
    assert f"kubectl -n {job['metadata']['namespace']} create configmap" in printed, printed


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # sweeps 0.2.0
def test_offline_sweep_is_an_indexed_job_over_a_grid(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["offline-sweep"]
    job = main_job(docs)
    spec = job["spec"]
    env = {e["name"]: e.get("value") for e in containers(job)[0]["env"]}
    workers = int(env["JOB_COMPLETIONS"])  # N for `trainjob sweep run`
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == workers
    # i comes from JOB_COMPLETION_INDEX, which the Job controller sets in every pod.
    assert containers(job)[0]["args"] == ["sweep", "run", "/etc/trainjob/sweep.yaml"]
    sweep = offline_sweep_config(docs)
    from sweeps.config.cfg import schema_violations_from_proposed_config

    assert schema_violations_from_proposed_config(sweep) == []
    assert sweep["method"] in ("grid", "random")  # bayes needs the other workers' results
    assert set(sweep["parameters"]) <= set(Settings.model_fields)
    for point in grid_points(sweep):
        Settings(**point)  # every grid point is a valid configuration


def offline_sweep_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if "sweep.yaml" in d.get("data", {})]
    return yaml.safe_load(cm["data"]["sweep.yaml"])


def grid_points(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    params = sweep["parameters"]
    names = sorted(params)
    choices = [
        params[n]["values"] if "values" in params[n] else [params[n]["value"]] for n in names
    ]
    return [dict(zip(names, combo, strict=True)) for combo in product(*choices)]


def test_sync_job_is_bounded_suspended_and_reads_the_same_volume(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay in ("offline", "offline-sweep"):
        docs = rendered[overlay]
        sync, train = sync_job(docs), main_job(docs)
        # `trainjob sync` bounds each wait (TRAINJOB_SYNC_STALL_S); the deadline bounds it all.
        assert 0 < sync["spec"]["activeDeadlineSeconds"] <= 24 * 3600, overlay
        assert sync["spec"]["suspend"] is True, overlay  # started once the runs are complete
        c = containers(sync)[0]
        assert c["command"] + c["args"] == ["python", "-m", "trainjob", "sync"]
        assert {"name": "WANDB_MODE", "value": "online"} in c["env"]
        assert claim(sync) == claim(train), overlay
        assert c["envFrom"] == containers(train)[0]["envFrom"], overlay  # same WANDB_DIR
        assert configmap(docs, c["envFrom"][0]["configMapRef"]["name"])["WANDB_MODE"] == "offline"


def test_sweep_agents_keep_their_runs_on_a_shared_claim(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """/workspace of the agents outlives them: a trial that fell back offline stays for the
    (suspended) sync Job, on the same ReadWriteMany claim; checkpoints are on it too."""
    docs = rendered["sweep-agents"]
    agent, sync = main_job(docs), sync_job(docs)
    (pvc,) = of_kind(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # several agents on several nodes

    def workspace(job: dict[str, Any]) -> dict[str, Any]:
        vols = job["spec"]["template"]["spec"]["volumes"]
        return next(v for v in vols if v["name"] == "workspace")

    for job in (agent, sync):
        assert workspace(job) == {
            "name": "workspace",
            "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]},
        }
    assert sync["spec"]["suspend"] is True
    assert containers(sync)[0]["envFrom"] == containers(agent)[0]["envFrom"]  # same WANDB_DIR
    mounts = {m["mountPath"]: m["name"] for m in containers(agent)[0]["volumeMounts"]}
    assert mounts["/workspace"] == "workspace"
    config = configmap(docs, containers(agent)[0]["envFrom"][0]["configMapRef"]["name"])
    assert config["WANDB_DIR"] == "/workspace"
    assert config["TRAINJOB_CHECKPOINT_DIR"].startswith("/workspace/")


def test_rwx_checkpoints_component_renders(tmp_path: Path) -> None:
    """The optional component (sweep-agents' kustomization names it in a comment)."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    rel = os.path.relpath(K8S, overlay)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [f"{rel}/overlays/sweep-agents"],
                "components": [f"{rel}/components/rwx-checkpoints"],
            }
        )
    )
    docs = render(overlay)
    claims = of_kind(docs, "PersistentVolumeClaim")
    (pvc,) = [c for c in claims if "checkpoints" in c["metadata"]["name"]]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    pod = main_job(docs)["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/workspace/checkpoints"] == "checkpoints"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["checkpoints"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    (tmp_path / "rendered.yaml").write_text(yaml.safe_dump_all(docs))
    for version in (schema_versions()[0], schema_versions()[-1]):
        kubernetes_validate(version, [tmp_path / "rendered.yaml"])


def test_dockerfile_entrypoint_matches_what_the_pods_assume() -> None:
    dockerfile = ROOT / "Dockerfile"
    if not dockerfile.exists():
        pytest.skip("no Dockerfile in this checkout")
    entry = re.findall(r"^ENTRYPOINT\s+(\[.*\])\s*$", dockerfile.read_text(), re.M)
    assert entry, "the image needs an exec-form ENTRYPOINT"
    argv = json.loads(entry[-1])
    assert argv[-2:] == ["-m", "trainjob"] or argv[-1:] == ["trainjob"], argv


# --- the pods' own commands, run here ------------------------------------------------------------


JOB_UID = "0b6c1c9e-5e1b-4e38-9d4c-3f0e1f2a7b11"


@dataclass
class Pod:
    """What the kubelet knows about one pod of a Job: its labels and annotations."""

    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    name: str = "pod-0"
    namespace: str = "trainjob"

    @classmethod
    def of(cls, job: dict[str, Any], index: int = 0, uid: str = JOB_UID) -> Pod:
        """A pod of ``job``; ``uid`` is the Job object's UID (a new one each time a Job is
        created, also under an old name), which the Job controller labels its pods with."""
        name = job["metadata"]["name"]
        labels = dict(job["spec"]["template"]["metadata"].get("labels", {}))
        labels.update(
            {
                "batch.kubernetes.io/job-name": name,
                "job-name": name,
                "batch.kubernetes.io/controller-uid": uid,
                "controller-uid": uid,
            }
        )
        annotations = {}
        if job["spec"].get("completionMode") == "Indexed":
            annotations["batch.kubernetes.io/job-completion-index"] = str(index)
        return cls(labels, annotations, name=f"{name}-{index}-x7k2p")


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's `$(VAR)`: defined names are replaced, `$$` escapes, others stay."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


def quantity(text: str) -> float:
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def pod_env(
    docs: list[dict[str, Any]],
    job: dict[str, Any],
    container: dict[str, Any],
    pod: Pod,
    cluster: dict[tuple[str, str], str] | None = None,
    missing: list[str] | None = None,
) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom, then env in order.
    ``cluster`` holds keys of Secrets and ConfigMaps the user creates, by (name, key)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmap(docs, source["configMapRef"]["name"]))
    entries = list(container.get("env", []))
    if job["spec"].get("completionMode") == "Indexed":  # appended by the Job controller
        index_ref = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        entries.append(
            {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"fieldPath": index_ref}}}
        )
    for entry in entries:
        name, source = entry["name"], entry.get("valueFrom")
        if source is None:
            env[name] = expand(entry.get("value", ""), env)
        elif "fieldRef" in source:
            env[name] = field_value(source["fieldRef"]["fieldPath"], pod)
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            limit = quantity(container["resources"]["limits"][ref["resource"].split(".")[1]])
            env[name] = str(math.ceil(limit / quantity(ref.get("divisor", "1"))))
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            ref = source.get("secretKeyRef") or source["configMapKeyRef"]
            rendered = [
                d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"] == ref["name"]
            ]
            if "configMapKeyRef" in source and rendered:
                value = rendered[0]["data"].get(ref["key"])
            else:
                value = (cluster or {}).get((ref["name"], ref["key"]))
            if value is not None:
                env[name] = value
            elif not ref.get("optional") and missing is not None:
                missing.append(f"{ref['name']}/{ref['key']}")
        else:
            raise AssertionError(f"unhandled env source {source}")
    return env


def field_value(path: str, pod: Pod) -> str:
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        values = pod.labels if match.group(1) == "labels" else pod.annotations
        return values[match.group(2)]
    return {"metadata.name": pod.name, "metadata.namespace": pod.namespace}[path]


@dataclass
class LocalPod:
    argv: list[str]
    env: dict[str, str]
    mounts: dict[str, Path]  # mountPath -> folder here
    missing_secrets: list[str]

    def host(self, path: str) -> Path:
        mount = max((m for m in self.mounts if _under(path, m)), key=len)
        return self.mounts[mount] / os.path.relpath(path, mount)

    def run(self, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv, env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout
        )


def local_pod(
    docs: list[dict[str, Any]],
    job: dict[str, Any],
    tmp: Path,
    index: int = 0,
    overrides: dict[str, str] | None = None,
    cluster: dict[tuple[str, str], str] | None = None,
) -> LocalPod:
    """The pod's container as a local process: volumes become folders under ``tmp`` (a PVC by
    its claim name, so two Jobs on one claim share it), paths in env and args are mapped."""
    (container,) = containers(job)
    pod = Pod.of(job, index)
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    mounts: dict[str, Path] = {}
    for m in container["volumeMounts"]:
        vol = volumes[m["name"]]
        if "persistentVolumeClaim" in vol:
            folder = tmp / "pvc" / vol["persistentVolumeClaim"]["claimName"]
        else:
            folder = tmp / f"pod{index}" / m["name"]
        if "configMap" in vol:
            folder.mkdir(parents=True, exist_ok=True)
            for key, text in configmap(docs, vol["configMap"]["name"]).items():
                (folder / key).write_text(text)
        mounts[m["mountPath"]] = folder / m.get("subPath", "")
        mounts[m["mountPath"]].mkdir(parents=True, exist_ok=True)
    missing: list[str] = []
    env = pod_env(docs, job, container, pod, cluster=cluster, missing=missing)
    args = [expand(a, env) for a in container.get("args", [])]
    command = [expand(a, env) for a in container.get("command", IMAGE_ENTRYPOINT)]
    local = LocalPod([], {}, mounts, missing)

    def mapped(value: str) -> str:
        if value.startswith("/") and any(_under(value, m) for m in mounts):
            return str(local.host(value))
        return value

    assert command[0] == "python"
    local.argv = [sys.executable, *command[1:], *map(mapped, args)]
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith((ENV_PREFIX, "WANDB_")) and k != "JOB_COMPLETION_INDEX"
    }
    local.env = {
        **inherited,
        **{k: mapped(v) for k, v in env.items()},
        "PYTHONPATH": str(SRC),  # this checkout's trainjob, as the image installs it
        **(overrides or {}),
    }
    return local


@pytest.fixture
def pod_root() -> Iterator[Path]:
    """A short folder for the pods' volumes: in a pod TMPDIR is /workspace/tmp, and sockets
    under it (multiprocessing's forkserver) must fit AF_UNIX's 108 bytes; pytest's tmp_path
    is too long for that."""
    root = Path(tempfile.mkdtemp(prefix="tj-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def put_tiny_data(local: LocalPod, tiny_data: Path) -> None:
    target = Path(local.env["TRAINJOB_DATA_DIR"])
    target.mkdir(parents=True, exist_ok=True)
    for gz in tiny_data.glob("*.gz"):
        shutil.copyfile(gz, target / gz.name)


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("trainjob: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("overlay", ["train", "offline"])
def test_run_id_is_one_per_job_object(
    overlay: str, rendered: dict[str, list[dict[str, Any]]], pod_root: Path
) -> None:
    """Every pod of one Job (restarts, replacements) gets one run id; the same manifest applied
    again (a new Job object under the same name, a new UID) gets another: it never reopens
    the first Job's finished run or resumes its checkpoints."""
    docs = rendered[overlay]
    job = main_job(docs)
    containers_ = containers(job)
    again = "7d1e2f3a-4b5c-4d6e-8f90-a1b2c3d4e5f6"
    env = [
        pod_env(docs, job, containers_[0], Pod.of(job, uid=u)) for u in (JOB_UID, JOB_UID, again)
    ]
    assert env[0]["TRAINJOB_RUN_ID"] == env[1]["TRAINJOB_RUN_ID"] == JOB_UID
    assert env[2]["TRAINJOB_RUN_ID"] == again
    # Checkpoints are kept per run id (<checkpoint_dir>/<run id>/): one folder per Job object.
    folders = [Path(e["TRAINJOB_CHECKPOINT_DIR"]) / e["TRAINJOB_RUN_ID"] for e in env]
    assert folders[0] == folders[1] != folders[2]
    assert env[0]["TRAINJOB_RUN_NAME"] == env[2]["TRAINJOB_RUN_NAME"] == job["metadata"]["name"]
    Settings(run_id=JOB_UID)  # a UID is a valid run id


def test_offline_pod_then_sync_pod_find_the_run(
    rendered: dict[str, list[dict[str, Any]]], tiny_data: Path, pod_root: Path
) -> None:
    docs = rendered["offline"]
    train = local_pod(docs, main_job(docs), pod_root, overrides=TINY)
    assert train.env["WANDB_MODE"] == "offline" and train.missing_secrets == []
    put_tiny_data(train, tiny_data)
    out = train.run(pod_root)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = offline_runs(train.host("/workspace"))
    assert run_dir.name.endswith(f"-{JOB_UID}")

    # The sync pod, on the same claim: its exact command, for real.
    sync = local_pod(docs, sync_job(docs), pod_root)
    assert sync.missing_secrets == [f"{SECRET}/{SECRET_KEY}"]  # required: it uploads
    assert sync.host("/workspace") == train.host("/workspace")

    def run_sync(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            sync.argv,
            env={**sync.env, **env},
            cwd=pod_root,  # cwd is not the volume: WANDB_DIR from the ConfigMap finds the runs
            capture_output=True,
            text=True,
            timeout=120,
        )

    # No server (a closed port): exit 8 at once, naming the one run left.
    started = time.monotonic()
    out = run_sync(WANDB_BASE_URL=f"http://127.0.0.1:{closed_port()}")
    assert out.returncode == 8 and "0 run(s) uploaded, 1 left" in out.stderr, out.stderr
    assert time.monotonic() - started < 10
    with fake_wandb("ok", pod_root) as server:
        # Without the Secret it stops loudly (hence the required key), uploading nothing.
        out = run_sync(WANDB_BASE_URL=server.url)
        assert out.returncode == 2 and "W&B credentials" in out.stderr, out.stderr
        assert not server.uploaded_steps()
        out = run_sync(WANDB_BASE_URL=server.url, WANDB_API_KEY="k" * 40)
        assert out.returncode == 0, out.stderr
        assert f"uploaded {JOB_UID}: 1 folder(s)" in out.stdout
        assert server.uploaded_steps() and list(run_dir.glob("*.wandb.synced"))


def boundary(pod: LocalPod) -> dict[str, Any]:
    """Run trainjob's own command dispatch and settings loading with the pod's env and args,
    stopping where the sweep code takes over."""
    script = (
        "import json, sys\n"
        "from trainjob.cli import parse\n"
        "from trainjob.settings import load_settings\n"
        "parsed = parse(sys.argv[1:])\n"
        "command = [*parsed.name.split(), *([parsed.file] if 'sweep' in parsed.name else [])]\n"
        "rest = parsed.flags\n"
        "settings = load_settings(rest)\n"
        "print(json.dumps({'command': command, 'rest': rest,"
        " 'settings': settings.model_dump(mode='json')}))\n"
    )
    assert pod.argv[1:3] == ["-m", "trainjob"]
    out = subprocess.run(
        [sys.executable, "-c", script, *pod.argv[3:]],
        env=pod.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_sweep_agent_pod_up_to_the_wandb_server(
    rendered: dict[str, list[dict[str, Any]]], pod_root: Path
) -> None:
    docs = rendered["sweep-agents"]
    job = main_job(docs)
    bare = local_pod(docs, job, pod_root / "bare")
    assert sorted(bare.missing_secrets) == sorted(
        [f"{SECRET}/{SECRET_KEY}", "/".join(SWEEP_CONFIGMAP)]
    )  # without them the pod does not start (CreateContainerConfigError), it never trains
    sweep_id = "entity/project/abc123"
    pod = local_pod(docs, job, pod_root, overrides=TINY, cluster={SWEEP_CONFIGMAP: sweep_id})
    assert pod.missing_secrets == [f"{SECRET}/{SECRET_KEY}"]
    seen = boundary(pod)
    assert seen["command"] == ["agent"] and seen["rest"] == []
    assert seen["settings"]["sweep_id"] == sweep_id
    assert seen["settings"]["parallel_trials"] == "auto"  # trials share the pod's GPU
    # Here, with no key and so no server, the agent stops at once: one line, exit 2.
    out = pod.run(pod_root, timeout=120)
    assert out.returncode == ExitCode.BAD_CONFIG, out.stderr[-3000:]
    assert sweep_id in one_error_line(out.stderr)


def test_offline_sweep_pod_runs_its_share(
    rendered: dict[str, list[dict[str, Any]]], tiny_data: Path, pod_root: Path
) -> None:
    docs = rendered["offline-sweep"]
    job = main_job(docs)
    workers = job["spec"]["completions"]
    pod = local_pod(docs, job, pod_root, index=0, overrides=TINY)
    assert pod.missing_secrets == []  # offline: no Secret needed
    sweep_file = pod.host("/etc/trainjob/sweep.yaml")
    assert yaml.safe_load(sweep_file.read_text()) == offline_sweep_config(docs)
    assert pod.argv[3:] == ["sweep", "run", str(sweep_file)]
    assert (pod.env["JOB_COMPLETION_INDEX"], pod.env["JOB_COMPLETIONS"]) == ("0", str(workers))
    seen = boundary(pod)
    assert seen["command"] == ["sweep", "run", str(sweep_file)] and seen["rest"] == []
    assert seen["settings"]["parallel_trials"] == "auto"
    put_tiny_data(pod, tiny_data)
    out = pod.run(pod_root, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = offline_sweep_config(docs)
    points = grid_points(sweep)
    runs = [read_offline_run(p) for p in offline_runs(pod.host("/workspace"))]
    share = len(points) // workers  # worker 0 of 3 runs points 0 and 3 of 6
    assert share <= len(runs) <= share + 1, [r.path.name for r in runs]
    for run in runs:
        assert {k: run.config[k] for k in points[0]} in points
        assert run.run_info.get("run_group") == sweep_group(sweep["name"], sweep_file.read_bytes())

    # The report Job, on the same claim, suspended until asked: its exact command writes the
    # page, and only the page, to its log (`kubectl logs job/... > report.html`).
    reporter = report_job(docs)
    assert reporter["spec"]["suspend"] is True and claim(reporter) == claim(job)
    report = local_pod(docs, reporter, pod_root)
    assert report.missing_secrets == [] and report.host("/workspace") == pod.host("/workspace")
    out = report.run(pod_root, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("<!DOCTYPE html>") and out.stdout.endswith("</html>\n")
    assert f"Sweep: {sweep['name']}" in out.stdout
    assert out.stdout.count("<tr data-run=") == len(runs)
