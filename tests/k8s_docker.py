"""A rendered Job's pod as `docker run` flags: the manifests and the image, run together.

The container's command and args, its environment as the kubelet builds it (ConfigMap envFrom,
downward API, resource fields, ``$(VAR)``), its securityContext and the pod's, its resources and
volumes become the equivalent `docker run` flags. What a single Docker engine cannot express is
listed in ``DockerPod.untranslated`` instead of being dropped silently.

    flags for kubectl kustomize k8s/overlays/train | the pod's container -> docker run ...
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from test_k8s import Pod, containers, expand, pod_env, quantity

# Equivalent by construction, so not flags: Docker's default seccomp profile is the runtime's
# default (RuntimeDefault), and a container without --restart is never restarted (Never).
DOCKER_DEFAULTS = {("seccompProfile", "RuntimeDefault"), ("restartPolicy", "Never")}


@dataclass
class DockerPod:
    flags: list[str]  # everything between `docker run` and the image
    image: str
    args: list[str]  # after the image: `--entrypoint` takes command[0], the rest come first
    env: dict[str, str]
    untranslated: list[str] = field(default_factory=list)
    missing_secrets: list[str] = field(default_factory=list)

    def argv(self, name: str) -> list[str]:
        return ["docker", "run", "--rm", "--name", name, *self.flags, self.image, *self.args]


def _bytes(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6}
    units |= {"G": 10**9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def security_flags(pod_ctx: dict[str, Any], ctx: dict[str, Any], out: DockerPod) -> None:
    """Container settings win over the pod's, as in Kubernetes."""
    merged = {**pod_ctx, **ctx}
    user, group = merged.get("runAsUser"), merged.get("runAsGroup")
    if user is not None:
        out.flags += ["--user", f"{user}:{group}" if group is not None else str(user)]
    if merged.get("runAsNonRoot"):
        # The kubelet refuses to start a container that would run as uid 0.
        assert user not in (None, 0), "runAsNonRoot needs a numeric non-zero runAsUser here"
    if "fsGroup" in pod_ctx:
        out.flags += ["--group-add", str(pod_ctx["fsGroup"])]
    if merged.get("readOnlyRootFilesystem"):
        out.flags.append("--read-only")
    if merged.get("allowPrivilegeEscalation") is False:
        out.flags += ["--security-opt", "no-new-privileges"]
    caps = merged.get("capabilities", {})
    out.flags += [f"--cap-drop={c}" for c in caps.get("drop", [])]
    out.flags += [f"--cap-add={c}" for c in caps.get("add", [])]
    seccomp = merged.get("seccompProfile", {}).get("type")
    if seccomp and ("seccompProfile", seccomp) not in DOCKER_DEFAULTS:
        out.untranslated.append(f"seccompProfile {seccomp}")
    handled = {"runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "readOnlyRootFilesystem"}
    handled |= {"allowPrivilegeEscalation", "capabilities", "seccompProfile"}
    handled |= {"fsGroupChangePolicy"}  # a named volume is owned by the image's user already
    out.untranslated += [f"securityContext.{k}" for k in merged if k not in handled]


def resource_flags(resources: dict[str, Any], host_cpus: int, out: DockerPod) -> None:
    limits = resources.get("limits", {})
    for name, value in limits.items():
        if name == "cpu":
            # Docker refuses more CPUs than the host has; the pod's env keeps the real limit.
            cpus = min(quantity(str(value)), host_cpus)
            out.flags += ["--cpus", f"{cpus:g}"]
        elif name == "memory":
            out.flags += ["--memory", str(_bytes(str(value)))]
        else:  # nvidia.com/gpu needs the NVIDIA runtime (--gpus); ephemeral-storage has none
            out.untranslated.append(f"limits.{name}={value}")


def volume_flags(
    spec: dict[str, Any], container: dict[str, Any], claims: dict[str, str], out: DockerPod
) -> None:
    """A PVC becomes the named volume ``claims[claimName]``; an emptyDir a tmpfs (one per
    mount: an emptyDir mounted twice is two folders here, as nothing shares them in the job);
    a medium: Memory emptyDir on /dev/shm sets the shm size."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        vol, path = volumes[mount["name"]], mount["mountPath"]
        ro = ",readonly" if mount.get("readOnly") else ""
        if "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]["claimName"]
            out.flags += ["--mount", f"type=volume,source={claims[claim]},target={path}{ro}"]
        elif "emptyDir" in vol and vol["emptyDir"] is not None:
            size = vol["emptyDir"].get("sizeLimit")
            if path == "/dev/shm" and vol["emptyDir"].get("medium") == "Memory":
                out.flags += ["--shm-size", str(_bytes(size))] if size else []
                continue
            opts = f",tmpfs-size={_bytes(size)}" if size else ""
            # An emptyDir is world-writable (0777); tmpfs-mode takes octal.
            out.flags += ["--mount", f"type=tmpfs,target={path},tmpfs-mode=1777{opts}"]
        else:
            out.untranslated.append(f"volume {mount['name']} ({', '.join(vol)})")


def docker_pod(
    docs: list[dict[str, Any]],
    job: dict[str, Any],
    claims: dict[str, str],
    cluster: dict[tuple[str, str], str] | None = None,
    host_cpus: int | None = None,
) -> DockerPod:
    """The Job's one container as `docker run` flags. ``claims`` maps each PVC's claim name to
    a Docker volume; ``cluster`` holds the Secret/ConfigMap keys the user creates."""
    spec = job["spec"]["template"]["spec"]
    (container,) = containers(job)
    missing: list[str] = []
    env = pod_env(docs, job, container, Pod.of(job), cluster=cluster, missing=missing)
    out = DockerPod(flags=["--network", "none"], image=container["image"], args=[], env=env)
    out.missing_secrets = missing
    for key, value in env.items():
        out.flags += ["-e", f"{key}={value}"]
    security_flags(spec.get("securityContext", {}), container.get("securityContext", {}), out)
    resource_flags(container.get("resources", {}), host_cpus or os.cpu_count() or 1, out)
    volume_flags(spec, container, claims, out)
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None:
        out.flags += ["--stop-timeout", str(math.ceil(grace))]
    if ("restartPolicy", spec.get("restartPolicy")) not in DOCKER_DEFAULTS:
        out.untranslated.append(f"restartPolicy {spec.get('restartPolicy')}")
    command = [expand(a, env) for a in container.get("command", [])]
    args = [expand(a, env) for a in container.get("args", [])]
    if command:  # Kubernetes' command replaces the ENTRYPOINT (and drops the image's CMD)
        out.flags += ["--entrypoint", command[0]]
        args = [*command[1:], *args]
    out.args = args
    return out
