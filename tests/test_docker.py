"""docker/: everything about the image that can be checked without a Docker engine."""

import ast
import json
import os
import re
import shlex
import subprocess

import pytest
import yaml

from conftest import REPO

DOCKER = os.path.join(REPO, "docker")


def parse_dockerfile(path):
    """
    Returns:
        list[tuple[str, str]]: (INSTRUCTION, arguments) with line continuations joined and
        comments dropped.
    """
    instructions, current = [], ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not current and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if current and line.lstrip().startswith("#"):  # comment inside a continuation
                continue
            if line.endswith("\\"):
                current += line[:-1] + " "
                continue
            current += line
            keyword, _, rest = current.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            current = ""
    assert not current, "Dockerfile ends with a line continuation"
    return instructions


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile(os.path.join(DOCKER, "Dockerfile"))


def args_of(dockerfile):
    """ARG name -> default value."""
    out = {}
    for keyword, rest in dockerfile:
        if keyword == "ARG":
            name, _, value = rest.partition("=")
            out[name] = value.strip('"')
    return out


def setup_py_constant(name):
    tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == name for t in node.targets):
            return node.value.value
    raise AssertionError(f"setup.py defines no {name}")


def makefile_variable(name):
    text = open(os.path.join(REPO, "Makefile")).read()
    match = re.search(rf"^{name}\s*:?=\s*(\S+)\s*$", text, re.M)
    assert match, f"Makefile defines no {name}"
    return match.group(1)


def test_known_instructions_only(dockerfile):
    known = {"FROM", "ARG", "ENV", "RUN", "WORKDIR", "COPY", "USER", "ENTRYPOINT", "CMD", "LABEL"}
    assert {k for k, _ in dockerfile} <= known
    assert dockerfile[0][0] == "FROM"


def test_base_image_is_pinned_cuda_devel(dockerfile):
    (base,) = [rest for keyword, rest in dockerfile if keyword == "FROM"]
    image, _, tag = base.partition(":")
    assert tag and tag != "latest" and "$" not in base, base
    assert re.match(r"\d+\.\d+\.\d+-cudnn-devel-", tag), "needs nvcc (devel) to build CUDA ops"
    # The toolkit must be the CUDA of the pinned torch wheel (torch 2.14 on PyPI: CUDA 13.0).
    assert tag.startswith("13.0."), tag


def test_versions_match_setup_py_and_makefile(dockerfile):
    args = args_of(dockerfile)
    for name in ("TORCH_VERSION", "TORCHVISION_VERSION"):
        assert args[name] == setup_py_constant(name) == makefile_variable(name), name


def test_detectron2_pinned_to_an_upstream_commit(dockerfile):
    commit = args_of(dockerfile)["DETECTRON2_COMMIT"]
    assert re.fullmatch(r"[0-9a-f]{40}", commit), commit
    runs = " ".join(rest for keyword, rest in dockerfile if keyword == "RUN")
    assert "github.com/facebookresearch/detectron2.git@${DETECTRON2_COMMIT}" in runs
    assert "FORCE_CUDA=1" in " ".join(rest for keyword, rest in dockerfile if keyword == "ENV")
    assert "import detectron2._C" in runs, "the build must prove the CUDA ops were compiled"


def test_copy_sources_exist_and_are_not_ignored(dockerfile):
    ignored = [line.strip() for line in open(os.path.join(REPO, ".dockerignore"))]
    assert ".venv" in ignored and ".git" in ignored
    copies = [shlex.split(rest) for keyword, rest in dockerfile if keyword == "COPY"]
    assert copies
    for words in copies:
        assert not any(w.startswith("--from") for w in words)
        for source in words[:-1]:
            assert os.path.exists(os.path.join(REPO, source)), source
            assert source.split("/")[0] not in ignored, source


def test_make_targets_run_by_the_image_exist(dockerfile):
    for keyword, rest in dockerfile:
        if keyword != "RUN" or not rest.startswith("make "):
            continue
        words = shlex.split(rest.split("&&")[0])
        targets = [w for w in words[1:] if "=" not in w]
        proc = subprocess.run(
            ["make", "-n", "-C", REPO, *targets, "PYTHON=python3"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr


def test_non_root_user_workdir_and_executable_entrypoint(dockerfile):
    users = [rest for keyword, rest in dockerfile if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    last_user = max(i for i, (keyword, _) in enumerate(dockerfile) if keyword == "USER")
    assert all(keyword != "RUN" for keyword, _ in dockerfile[last_user:]), "RUN after USER"
    workdir = [rest for keyword, rest in dockerfile if keyword == "WORKDIR"][-1]
    (entry,) = [json.loads(rest) for keyword, rest in dockerfile if keyword == "ENTRYPOINT"]
    script = [part for part in entry if part.endswith("entrypoint.sh")]
    assert script and script[0].startswith(workdir + "/"), entry
    local = os.path.join(REPO, os.path.relpath(script[0], workdir))
    assert os.path.isfile(local) and os.access(local, os.X_OK), local
    assert subprocess.run(["bash", "-n", local], timeout=30).returncode == 0
    assert ["COPY", "docker ./docker"] in [list(i) for i in dockerfile]


def test_readme_documents_build_run_shm_and_exit_code():
    text = open(os.path.join(DOCKER, "README.md")).read()
    from rethink_d2.engine.preemption import PREEMPTED_EXIT_CODE

    for needle in [
        "docker build -f docker/Dockerfile",
        "docker run",
        "--shm-size",
        f"code {PREEMPTED_EXIT_CODE}",
        "examples/slurm.sbatch",
        "examples/k8s-pytorchjob.yaml",
        "CHECKPOINTS_TO_KEEP",
        "Auto-resume",
    ]:
        assert needle in text, needle


def test_slurm_example():
    path = os.path.join(DOCKER, "examples", "slurm.sbatch")
    text = open(path).read()
    assert subprocess.run(["bash", "-n", path], timeout=30).returncode == 0
    assert "#SBATCH --ntasks-per-node=1" in text  # one launcher per node
    assert re.search(r"#SBATCH --signal=USR1@\d+", text)
    assert "/opt/rethink-d2/docker/entrypoint.sh" in text and "IMAGE" in text
    assert '"$rc" -eq 75' in text and "scontrol requeue" in text


@pytest.mark.parametrize("name", ["k8s-pytorchjob.yaml", "k8s-job.yaml"])
def test_kubernetes_examples(name):
    docs = [d for d in yaml.safe_load_all(open(os.path.join(DOCKER, "examples", name))) if d]
    pods = []
    for doc in docs:
        if doc["kind"] == "PyTorchJob":
            specs = doc["spec"]["pytorchReplicaSpecs"]
            assert set(specs) == {"Master", "Worker"}
            assert all(s["restartPolicy"] == "OnFailure" for s in specs.values())
            pods += [s["template"]["spec"] for s in specs.values()]
        elif doc["kind"] == "Job":
            spec = doc["spec"]
            assert spec["completionMode"] == "Indexed"
            rules = spec["podFailurePolicy"]["rules"]
            assert any(r.get("onExitCodes", {}).get("values") == [75] for r in rules)
            pods.append(spec["template"]["spec"])
    assert pods
    for pod in pods:
        assert pod["terminationGracePeriodSeconds"] >= 60
        (container,) = pod["containers"]
        assert container["image"].startswith("registry.example.com/rethink-d2:")
        assert "--config" in container["args"]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/dev/shm" in mounts
        assert pod["securityContext"]["runAsUser"] != 0
