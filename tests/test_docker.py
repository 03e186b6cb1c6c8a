"""docker/ and constraints.txt: what can be checked about the image without a Docker engine.

These tests do NOT build the image and do not run it: no Docker engine or GPU is available
where they run. They read docker/Dockerfile as text and check its structure (a build and a
runtime stage, no compilers or test tools in the runtime stage, a non-root user, layer order),
that the Makefile and the Dockerfile take their versions from the one constraints.txt, and the
job examples (Slurm, Kubernetes) as files. Whether the pinned versions resolve, whether
Detectron2's CUDA ops compile and whether the image starts is only known after
`docker build -f docker/Dockerfile .` on a machine with Docker (see docs/cluster.md).
"""

import ast
import json
import os
import re
import shlex
import subprocess

import pytest
import yaml

from conftest import REPO
from rethink_d2.engine.preemption import PREEMPTED_EXIT_CODE
from rethink_d2.launch.__main__ import RETRY_EXIT_CODE_ENV_VAR, reported_exit_code

DOCKER = os.path.join(REPO, "docker")
CONSTRAINTS = "constraints.txt"
# Installed by the Makefile for the test suite only: never in the image.
TEST_TOOLS = {"pytest", "pytest-timeout", "pytest-xdist"}
# Packages that put a compiler, headers or the CUDA toolkit into an image.
BUILD_TOOLS = re.compile(
    r"\b(g\+\+|gcc|clang|make|cmake|ninja-build|build-essential|git|\S+-dev|cuda-toolkit\S*|"
    r"cuda-nvcc\S*|libcudnn\S*-dev)\b"
)


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
            instructions.append((keyword.upper(), " ".join(rest.split())))
            current = ""
    assert not current, "Dockerfile ends with a line continuation"
    return instructions


def split_stages(instructions):
    """
    Returns:
        dict[str, list[tuple[str, str]]]: stage name -> its instructions (FROM first).
    """
    stages, name = {}, None
    for keyword, rest in instructions:
        if keyword == "FROM":
            words = rest.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"unnamed stage: FROM {rest}"
            name = words[2]
            stages[name] = []
        assert name, f"{keyword} before the first FROM"
        stages[name].append((keyword, rest))
    return stages


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile(os.path.join(DOCKER, "Dockerfile"))


@pytest.fixture(scope="module")
def stages(dockerfile):
    return split_stages(dockerfile)


def normalize(name):
    """PEP 503 name: ``Pillow`` -> ``pillow``, ``faster_coco_eval`` -> ``faster-coco-eval``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement):
    return normalize(re.split(r"[<>=!~;\[ ]", requirement.strip("'\""), maxsplit=1)[0])


def constraint_pins():
    """constraints.txt as {normalized name: version}; every line is an exact ``name==version``."""
    pins = {}
    for line in open(os.path.join(REPO, CONSTRAINTS)):
        line = line.split("#")[0].strip()
        if not line:
            continue
        # name==version, optionally for some Pythons only (`; python_version >= "3.11"`)
        match = re.fullmatch(
            r'([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)(; python_version >= "3\.\d+")?',
            line,
        )
        assert match, f"{CONSTRAINTS}: {line!r} is not an exact pin name==version"
        name = normalize(match.group(1))
        assert name not in pins, f"{CONSTRAINTS} pins {name} twice"
        pins[name] = match.group(2)
    return pins


def makefile_d2_deps():
    """Requirement names of the Makefile's D2_DEPS (Detectron2's runtime dependencies)."""
    text = open(os.path.join(REPO, "Makefile")).read()
    match = re.search(r"^D2_DEPS\s*:=\s*((?:.*\\\n)*.*)$", text, re.M)
    assert match, "Makefile defines no D2_DEPS"
    return {requirement_name(r) for r in shlex.split(match.group(1).replace("\\\n", " "))}


def pip_installs(instructions):
    """The package names of every ``pip install`` in RUN instructions (local paths skipped)."""
    names = []
    for keyword, rest in instructions:
        if keyword != "RUN":
            continue
        for command in rest.split("&&"):
            words = shlex.split(command)
            if "pip" not in " ".join(words[:1]) or words[1:2] != ["install"]:
                continue
            skip_next = False
            for word in words[2:]:
                if skip_next:
                    skip_next = False
                elif word in ("-c", "-r", "-w", "--target"):
                    skip_next = True
                elif not word.startswith("-") and not word.startswith(("/", ".")):
                    names.append(requirement_name(word))
    return names


def setup_py_constant(name):
    tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == name for t in node.targets):
            return node.value.value
    raise AssertionError(f"setup.py defines no {name}")


# ---- the image's structure ---------------------------------------------------------------


def test_known_instructions_only(dockerfile):
    known = {"FROM", "ARG", "ENV", "RUN", "WORKDIR", "COPY", "USER", "ENTRYPOINT", "CMD", "LABEL"}
    assert {k for k, _ in dockerfile} <= known
    assert dockerfile[0][0] == "FROM"


def test_build_and_runtime_stages_on_pinned_cuda_images(stages):
    assert list(stages) == ["build", "runtime"], "a build stage, then the final runtime stage"
    tags = {}
    for name, instructions in stages.items():
        image = instructions[0][1].split()[0]
        repository, _, tag = image.partition(":")
        assert repository == "nvidia/cuda" and tag and "$" not in image, image
        # The toolkit must be the CUDA of the pinned torch wheel (torch 2.14 on PyPI: CUDA 13.0).
        assert tag.startswith("13.0."), tag
        tags[name] = tag
    assert "-devel-" in tags["build"], "the build stage needs nvcc to compile the CUDA ops"
    assert re.search(r"-(base|runtime|cudnn-runtime)-", tags["runtime"]), tags["runtime"]
    assert "devel" not in tags["runtime"]
    # Same OS (hence the same python3) in both: the build stage's virtualenv is copied.
    assert tags["build"].rsplit("-", 1)[1] == tags["runtime"].rsplit("-", 1)[1]


def test_runtime_stage_has_no_compilers_headers_or_test_tools(stages):
    for keyword, rest in stages["runtime"]:
        if keyword == "RUN" and "apt-get install" in rest:
            found = BUILD_TOOLS.findall(rest.split("apt-get install", 1)[1])
            assert not found, f"runtime stage installs {found}"
    # The runtime stage copies the build stage's virtualenv: nothing there may be a test tool.
    everything = " ".join(rest for _, rest in stages["build"] + stages["runtime"])
    assert "pytest" not in everything
    installed = pip_installs(stages["build"] + stages["runtime"])
    assert not TEST_TOOLS & set(installed)
    # Only the build result crosses over, not the build stage's whole file system.
    copies_from = [rest for k, rest in stages["runtime"] if k == "COPY" and "--from" in rest]
    assert copies_from == ["--from=build /opt/venv /opt/venv"], copies_from


def test_detectron2_built_from_a_pinned_commit_with_cuda_ops(stages):
    build = stages["build"]
    args = {r.split("=")[0]: r.split("=", 1)[1].strip('"') for k, r in build if k == "ARG"}
    assert re.fullmatch(r"[0-9a-f]{40}", args["DETECTRON2_COMMIT"]), args
    runs = " ".join(rest for keyword, rest in build if keyword == "RUN")
    assert "github.com/facebookresearch/detectron2.git@${DETECTRON2_COMMIT}" in runs
    assert "FORCE_CUDA=1" in " ".join(rest for keyword, rest in build if keyword == "ENV")
    assert "import detectron2._C" in runs, "the build must prove the CUDA ops were compiled"


def test_heavy_layers_come_before_the_package(stages):
    build, runtime = stages["build"], stages["runtime"]
    # The build stage sees one file of the repository: the pins.
    copies = [rest for keyword, rest in build if keyword == "COPY"]
    assert copies == [f"{CONSTRAINTS} /tmp/{CONSTRAINTS}"], copies
    first_copy = next(i for i, (k, _) in enumerate(build) if k == "COPY")
    first_pip = next(i for i, (k, r) in enumerate(build) if k == "RUN" and "pip " in r)
    assert first_copy < first_pip
    # In the runtime stage, the virtualenv is copied before any file of the package, and
    # nothing is installed with dependencies after the package arrives.
    index = {i: (k, r) for i, (k, r) in enumerate(runtime)}
    venv = next(i for i, (k, r) in index.items() if k == "COPY" and "--from" in r)
    package = [i for i, (k, r) in index.items() if k == "COPY" and "--from" not in r]
    assert package and venv < min(package)
    for i, (keyword, rest) in index.items():
        if i > min(package) and keyword == "RUN" and "pip" in rest:
            assert "--no-deps" in rest and "-e ." in rest, rest


def test_every_pip_install_uses_the_constraints(dockerfile):
    for keyword, rest in dockerfile:
        if keyword != "RUN":
            continue
        for command in rest.split("&&"):
            if re.search(r"pip install", command) and "--no-deps" not in command:
                assert f"-c /tmp/{CONSTRAINTS}" in command, command


def test_copy_sources_exist_and_are_not_ignored(dockerfile):
    ignored = [line.strip() for line in open(os.path.join(REPO, ".dockerignore"))]
    assert ".venv" in ignored and ".git" in ignored
    copies = [shlex.split(rest) for keyword, rest in dockerfile if keyword == "COPY"]
    assert copies
    for words in copies:
        if any(w.startswith("--from") for w in words):
            continue
        for source in words[:-1]:
            assert os.path.exists(os.path.join(REPO, source)), source
            assert source.split("/")[0] not in ignored, source


def test_non_root_user_workdir_and_executable_entrypoint(stages):
    runtime = stages["runtime"]
    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith("0:"), users
    last_user = max(i for i, (keyword, _) in enumerate(runtime) if keyword == "USER")
    assert all(keyword != "RUN" for keyword, _ in runtime[last_user:]), "RUN after USER"
    creates_user = " ".join(rest for keyword, rest in runtime if keyword == "RUN")
    assert "useradd" in creates_user and users[-1] in creates_user
    workdir = [rest for keyword, rest in runtime if keyword == "WORKDIR"][-1]
    (entry,) = [json.loads(rest) for keyword, rest in runtime if keyword == "ENTRYPOINT"]
    script = [part for part in entry if part.endswith("entrypoint.sh")]
    assert script and script[0].startswith(workdir + "/"), entry
    local = os.path.join(REPO, os.path.relpath(script[0], workdir))
    assert os.path.isfile(local) and os.access(local, os.X_OK), local
    assert subprocess.run(["bash", "-n", local], timeout=30).returncode == 0
    assert ["COPY", "docker/entrypoint.sh ./docker/entrypoint.sh"] in [list(i) for i in runtime]


# ---- one constraints file for the Makefile and the image -----------------------------------


def test_constraints_pin_everything_the_makefile_and_the_image_install(dockerfile):
    pins = constraint_pins()
    makefile = makefile_d2_deps() | {"torch", "torchvision", "sal-detectron2"} | TEST_TOOLS
    image = set(pip_installs(dockerfile))
    missing = sorted((makefile | image) - set(pins))
    assert not missing, f"not pinned in {CONSTRAINTS}: {missing}"
    # setup.py's minimum torch is the pinned one.
    assert pins["torch"] == setup_py_constant("TORCH_VERSION")
    assert pins["torchvision"] == setup_py_constant("TORCHVISION_VERSION")


def test_image_installs_the_makefile_runtime_dependencies(dockerfile):
    image = set(pip_installs(dockerfile))
    assert {"torch", "torchvision"} <= image
    assert makefile_d2_deps() - TEST_TOOLS <= image, "add the Makefile's new D2_DEPS to the image"


def test_every_makefile_install_uses_the_constraints():
    # -B: print every recipe as if nothing were installed yet; -n: run nothing.
    proc = subprocess.run(
        ["make", "-n", "-B", "-C", REPO, "setup", "PYTHON=python3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    installs = [
        line for line in proc.stdout.splitlines() if re.search(r"pip\S* .*\binstall ", line)
    ]
    assert len(installs) >= 4, proc.stdout
    for line in installs:
        assert f"install -c {CONSTRAINTS}" in line, line


def test_editing_the_constraints_reruns_the_installs():
    # -W: as if constraints.txt had just been edited; -n: print, run nothing.
    proc = subprocess.run(
        ["make", "-n", "-W", CONSTRAINTS, "-C", REPO, "setup", "PYTHON=python3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for what in ("torch torchvision", "fvcore", "sal-detectron2", "-e ."):
        assert any("install" in line and what in line for line in proc.stdout.splitlines()), what


# ---- documentation and job examples --------------------------------------------------------


def test_readme_run_examples_work_for_the_non_root_user():
    text = open(os.path.join(DOCKER, "README.md")).read()
    for needle in [
        "docker build -f docker/Dockerfile",
        "--shm-size",
        f"code {PREEMPTED_EXIT_CODE}",
        "--stop-timeout 300",
        "docker stop -t 300",
        "cannot be built here",
        "examples/slurm.sbatch",
        "examples/k8s-pytorchjob.yaml",
    ]:
        assert needle in text, needle
    # Every block that mounts a host folder creates it first or runs as the calling user
    # (Docker would create a missing folder as root, unwritable for uid 10001).
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    for block in blocks:
        mounts = re.findall(r'-v "?\$(?:PWD|\{PWD\})/(\w+):', block)
        for folder in mounts:
            assert (
                f"mkdir -p {folder}" in block or '--user "$(id -u):$(id -g)"' in block
            ), f"{folder}/ is mounted without mkdir -p or --user: {block}"


def test_slurm_example():
    path = os.path.join(DOCKER, "examples", "slurm.sbatch")
    text = open(path).read()
    assert subprocess.run(["bash", "-n", path], timeout=30).returncode == 0
    assert "#SBATCH --ntasks-per-node=1" in text  # one launcher per node
    assert re.search(r"#SBATCH --signal=USR1@\d+", text)
    assert re.search(r"^srun --kill-on-bad-exit=1 ", text, re.M), "a failed node stops all"
    assert "/opt/rethink-d2/docker/entrypoint.sh" in text and "IMAGE" in text
    assert f'"$rc" -eq {PREEMPTED_EXIT_CODE}' in text and "scontrol requeue" in text


def test_indexed_job_fails_on_exit_2_and_restarts_on_75():
    docs = yaml.safe_load_all(open(os.path.join(DOCKER, "examples", "k8s-job.yaml")))
    (job,) = [d for d in docs if d and d["kind"] == "Job"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy

    def action(exit_code):
        """Kubernetes' rule: the first rule whose onExitCodes matches decides."""
        for rule in spec["podFailurePolicy"]["rules"]:
            codes = rule.get("onExitCodes")
            if codes and codes["operator"] == "In" and exit_code in codes["values"]:
                return rule["action"]
            if codes and codes["operator"] == "NotIn" and exit_code not in codes["values"]:
                return rule["action"]
        return "Count"

    assert action(2) == "FailJob"
    assert action(PREEMPTED_EXIT_CODE) == "Ignore"
    assert action(1) == "Count"  # other failures are retried up to backoffLimit


def test_pytorchjob_does_not_restart_exit_2_but_restarts_preemption():
    (job,) = yaml.safe_load_all(open(os.path.join(DOCKER, "examples", "k8s-pytorchjob.yaml")))
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master", "Worker"}
    for spec in specs.values():
        # Kubeflow's ExitCode policy: 128-255 are restarted, 1-127 fail the job.
        assert spec["restartPolicy"] == "ExitCode"
        (container,) = spec["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        retry = int(env[RETRY_EXIT_CODE_ENV_VAR])

        def restarted(code):
            return reported_exit_code(code, retry) >= 128

        assert restarted(PREEMPTED_EXIT_CODE) and restarted(-9)
        assert not restarted(2) and reported_exit_code(0, retry) == 0


@pytest.mark.parametrize("name", ["k8s-pytorchjob.yaml", "k8s-job.yaml"])
def test_kubernetes_pods(name):
    docs = [d for d in yaml.safe_load_all(open(os.path.join(DOCKER, "examples", name))) if d]
    pods = []
    for doc in docs:
        if doc["kind"] == "PyTorchJob":
            pods += [s["template"]["spec"] for s in doc["spec"]["pytorchReplicaSpecs"].values()]
        elif doc["kind"] == "Job":
            pods.append(doc["spec"]["template"]["spec"])
    assert pods
    for pod in pods:
        assert pod["terminationGracePeriodSeconds"] >= 300  # the preemption checkpoint
        (container,) = pod["containers"]
        assert container["image"].startswith("registry.example.com/rethink-d2:")
        assert "--config" in container["args"]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/dev/shm" in mounts
        assert pod["securityContext"]["runAsUser"] != 0
