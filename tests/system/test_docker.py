"""The deployment files in docker/: the Dockerfile (hadolint), the compose file (Compose itself and its
JSON schema), the nginx config, the entrypoint and the health probes. No Docker engine is needed."""
from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import jsonschema_rs
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yml"
ENV_EXAMPLE = DOCKER / "env.example"
NGINX = DOCKER / "nginx.conf"
# Debian's docker-compose (v1) carries the Compose specification's JSON schema in its Python package.
COMPOSE_SCHEMA = Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN$|_KEY$")


def _tool(name: str) -> str:
    """A command the Makefile installs: fail where it could be installed, skip only where it cannot."""
    path = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if path:
        return path
    if shutil.which("apt-get"):
        pytest.fail(f"{name} is missing: `make test` installs it (or apt-get install --no-install-recommends {name})")
    pytest.skip(f"{name} comes from Debian's packages, and this machine has no apt-get")


def _compose_config(env_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_tool("docker-compose"), "-f", str(COMPOSE), "--env-file", str(env_file), "config"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )


@pytest.fixture(scope="module")
def rendered() -> dict:
    """The compose file as Compose resolves it with the example env file (interpolated, anchors merged)."""
    result = _compose_config(ENV_EXAMPLE)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value
    return values


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Dockerfile instructions by stage name (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, args = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            current = stages.setdefault(args.split()[-1] if " AS " in args.upper() else args, [])
        current.append((instruction.upper(), args.strip()))
    return stages


# --- Dockerfile


def test_the_dockerfile_has_no_hadolint_findings():
    result = subprocess.run([_tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_every_hadolint_ignore_says_why():
    """An ignore lives next to the line it excuses, under a comment giving the reason; none are global."""
    assert not [*ROOT.glob(".hadolint.y*ml"), *DOCKER.glob(".hadolint.y*ml")]
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#") and "hadolint" not in above and above.strip("# "), (
                f"line {number + 1}: put a comment saying why above `{line.strip()}`")


def test_both_images_run_as_a_numeric_non_root_user():
    stages = _stages()
    assert {"web", "worker"} <= set(stages)
    for name in ("web", "worker"):
        users = [args for instruction, args in stages[name] if instruction == "USER"]
        assert users, f"stage {name} never leaves root"
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) != 0, f"stage {name} runs as {users[-1]!r}"


def test_no_secrets_or_model_weights_go_into_the_images():
    stages = _stages()
    for name, instructions in stages.items():
        for instruction, args in instructions:
            if instruction in ("COPY", "ADD"):
                sources = [a for a in args.split() if not a.startswith("--")][:-1]
                assert "." not in sources, f"stage {name}: `{instruction} {args}` sends the whole checkout"
                for source in sources:
                    assert not re.search(r"(^|/)(var|models?|\.env|secret_key)(/|$)|\.(safetensors|bin|pt|gguf)$",
                                         source), f"stage {name}: {instruction} {args}"
            if instruction in ("ENV", "ARG"):  # both end up in the image's metadata
                for variable in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", args):
                    assert not SECRET_NAME.search(variable), f"stage {name}: {instruction} {args}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "var", ".env", "docker/.env"} <= set(ignored)


def test_weights_uploads_and_schedules_live_on_volumes(rendered):
    for name in ("web", "worker-1", "beat"):
        volumes = [v.split(":")[:2] for v in rendered["services"][name]["volumes"]]
        assert ["models", "/models"] in volumes and ["data", "/data"] in volumes, name
        assert rendered["services"][name]["environment"]["HF_HOME"] == "/models"


# --- compose.yml


def test_the_compose_file_renders_with_the_example_env_file(rendered):
    assert {"nginx", "web", "migrate", "worker-1", "beat", "redis", "postgres"} <= set(rendered["services"])


def test_compose_refuses_to_render_without_a_secret_key(tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in _env_example().items() if k != "SECRET_KEY"))
    result = _compose_config(env_file)
    assert result.returncode != 0
    assert "set SECRET_KEY in docker/.env" in result.stderr


@pytest.mark.parametrize("which", ["as written", "as rendered"])
def test_the_compose_file_matches_the_compose_specification_schema(which, raw, rendered):
    if not COMPOSE_SCHEMA.exists():
        _tool("docker-compose")  # the schema ships with it
    validator = jsonschema_rs.validator_for(json.loads(COMPOSE_SCHEMA.read_text()))
    document = raw if which == "as written" else rendered
    errors = [str(error).splitlines()[0] for error in validator.iter_errors(document)]
    assert errors == []
    # The validator does look: a misspelt key is caught.
    broken = json.loads(json.dumps(document))
    broken["services"]["web"]["healthcheck"]["intervall"] = "5s"
    assert not validator.is_valid(broken)


def test_each_worker_reserves_its_own_gpus(rendered):
    workers = {name: s for name, s in rendered["services"].items() if name.startswith("worker")}
    assert len(workers) >= 2
    gpus = []
    for name, service in workers.items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and devices[0]["driver"] == "nvidia", name
        assert "gpu" in devices[0]["capabilities"], name
        # device_ids, not count: `count: 1` would hand every worker the same first GPU.
        assert devices[0]["device_ids"] and "count" not in devices[0], name
        gpus.append(tuple(devices[0]["device_ids"]))
    assert len(set(gpus)) == len(gpus), "two workers default to the same GPU"
    assert not any("deploy" in s for n, s in rendered["services"].items() if n not in workers)


def test_every_service_has_a_health_check_or_is_a_one_shot_others_wait_for(rendered):
    services = rendered["services"]
    awaited_to_finish = {dep for s in services.values() for dep, cond in s.get("depends_on", {}).items()
                         if cond["condition"] == "service_completed_successfully"}
    for name, service in services.items():
        check = service.get("healthcheck", {})
        if check.get("disable") or check.get("test") == ["NONE"]:  # Compose renders `disable` as NONE
            assert name in awaited_to_finish and service["restart"] == "no", f"{name} has no health check"
        else:
            assert check.get("test") and check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_services_start_only_when_what_they_need_is_healthy(rendered):
    services = rendered["services"]
    expected = {
        "nginx": {"web"},
        "web": {"migrate", "postgres", "redis"},
        "migrate": {"postgres"},
        "worker-1": {"migrate", "postgres", "redis"},
        "beat": {"migrate", "redis"},
    }
    for name, needs in expected.items():
        assert set(services[name]["depends_on"]) == needs, name
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if dependency == "migrate" else "service_healthy"
            assert condition == {"condition": wanted}, f"{name} -> {dependency}"


def test_the_compose_file_holds_no_secret_values():
    """Secrets are ${VARIABLE}s filled from docker/.env; the file itself can be shared and committed."""
    text = COMPOSE.read_text()
    for name, value in re.findall(r"^\s*([A-Z][A-Z0-9_]*):\s*(.+)$", text, re.MULTILINE):
        if SECRET_NAME.search(name):
            assert re.fullmatch(r"\$\{[A-Z0-9_]+(:[-?][^}]*)?\}", value.strip()), f"{name}: {value}"
    # The database password reaches DATABASE_URL by reference too.
    assert "@postgres:5432" in text and re.search(r"://\$\{POSTGRES_USER[^}]*\}:\$\{POSTGRES_PASSWORD", text)
    assert "change-me" not in text and "sk-" not in text


def test_every_compose_variable_has_a_documented_example():
    code = "\n".join(line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", code))
    documented = _env_example()
    assert used - set(documented) == set()
    lines = ENV_EXAMPLE.read_text().splitlines()
    # Every secret in the example is a placeholder the entrypoint refuses, or empty (an optional one).
    for name, value in documented.items():
        if SECRET_NAME.search(name):
            assert value == "" or "change-me" in value, name
    assert any(line.startswith("#") for line in lines[:5])


def _readme_settings() -> dict[str, str]:
    """README's settings table: each variable's default as written there."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Settings (environment variables)", 1)[1].split("\n## ", 1)[0]
    settings = {}
    for row in table.splitlines():
        if row.startswith("| `"):
            cells = row.split("|")
            names = re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[1])
            defaults = [d.strip() for d in cells[2].split(",")] if len(names) > 1 else [cells[2].strip()]
            settings.update(zip(names, defaults + [""] * len(names), strict=False))
    return settings


def test_every_setting_in_the_readme_reaches_the_app_containers(raw):
    """A setting added to README's table must be added to compose.yml (and env.example) too."""
    not_for_containers = {
        "HOST", "PORT", "TEST_REDIS_URL",  # `make run` and the test suite
        "STATIC_ROOT",  # the web image's own (static files are collected at build time); empty would undo it
    }
    missing = set(_readme_settings()) - not_for_containers - set(raw["x-app-environment"])
    assert missing == set(), f"add {sorted(missing)} to x-app-environment in docker/compose.yml and to env.example"


def test_booleans_default_to_the_apps_defaults_not_to_empty(raw):
    """The app reads an empty boolean as false: MODERATION_ENABLED= would switch moderation off."""
    booleans = {name: default.strip("`") for name, default in _readme_settings().items()
                if default in ("`true`", "`false`")}
    assert {"MODERATION_ENABLED", "ENGINE_BATCHING", "DEBUG"} <= set(booleans)
    for name, default in booleans.items():
        assert raw["x-app-environment"][name] == f"${{{name}:-{default}}}", name
        assert _env_example()[name] == default, name


# --- nginx.conf


def _nginx_blocks(text: str) -> list:
    """nginx's syntax as nested [name, args, children] lists (enough for this file)."""
    tokens = re.findall(r'"[^"]*"|\'[^\']*\'|[{};]|[^\s{};]+', re.sub(r"#[^\n]*", "", text))
    stack: list[list] = [[]]
    words: list[str] = []
    for token in tokens:
        if token == "{":
            block = [words[0], words[1:], []]
            stack[-1].append(block)
            stack.append(block[2])
            words = []
        elif token == "}":
            stack.pop()
        elif token == ";":
            stack[-1].append([words[0], words[1:], None])
            words = []
        else:
            words.append(token)
    return stack[0]


def _directives(block: list, name: str) -> list[list[str]]:
    return [args for directive, args, _ in block if directive == name]


def _seconds(value: str) -> int:
    return int(value[:-1]) * {"s": 1, "m": 60, "h": 3600}[value[-1]]


@pytest.fixture(scope="module")
def tls_server() -> list:
    servers = [children for name, _, children in _nginx_blocks(NGINX.read_text()) if name == "server"]
    (tls,) = [s for s in servers if any("ssl" in args for args in _directives(s, "listen"))]
    return tls


def test_nginx_passes_websocket_upgrades_to_daphne(tls_server):
    top = _nginx_blocks(NGINX.read_text())
    (mapping,) = [m for m in top if m[0] == "map"]
    assert mapping[1] == ["$http_upgrade", "$connection_upgrade"]
    assert ["default", "upgrade"] in [[name, *args] for name, args, _ in mapping[2]]
    headers = {args[0].lower(): args[1] for args in _directives(tls_server, "proxy_set_header")}
    assert headers["upgrade"] == "$http_upgrade" and headers["connection"] == "$connection_upgrade"
    assert _directives(tls_server, "proxy_http_version") == [["1.1"]]
    assert headers["x-forwarded-for"] == "$proxy_add_x_forwarded_for"
    assert headers["x-forwarded-proto"] == "$scheme" and headers["host"] == "$host"


def test_no_nginx_location_drops_the_proxy_headers(tls_server):
    """nginx inherits proxy_set_header only into a location that sets none of its own."""
    for name, args, children in tls_server:
        if name == "location":
            assert not _directives(children, "proxy_set_header"), f"location {args}"


def test_nginx_keeps_sockets_and_streams_open_and_unbuffered(tls_server):
    locations = {" ".join(args): children for name, args, children in tls_server if name == "location"}
    sockets = locations["/ws/"]
    assert _seconds(_directives(sockets, "proxy_read_timeout")[0][0]) >= 3600
    for streamed in ("/v1/", "= /chat/completions"):
        assert _directives(locations[streamed], "proxy_buffering") == [["off"]], streamed
        assert _seconds(_directives(locations[streamed], "proxy_read_timeout")[0][0]) >= 600, streamed
    for children in locations.values():
        assert _directives(children, "proxy_pass") in ([["$daphne"]], []), children


def test_nginx_takes_bodies_as_large_as_the_api_does(tls_server, settings):
    (limit,) = _directives(tls_server, "client_max_body_size")
    size = int(limit[0][:-1]) * {"k": 1024, "m": 1024**2, "g": 1024**3}[limit[0][-1].lower()]
    assert size >= settings.API_MAX_BODY_BYTES


def test_compose_mounts_the_nginx_config_and_publishes_only_nginx(rendered):
    services = rendered["services"]
    mounts = [v.split(":")[:2] for v in services["nginx"]["volumes"]]
    assert [str(NGINX), "/etc/nginx/conf.d/default.conf"] in mounts
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"nginx"}


def test_only_nginx_and_web_reach_outside_workers_and_data_sit_on_an_internal_network(rendered):
    """The guide's "VPC + private subnet": weights and user data never reach the internet. Workers, Redis,
    PostgreSQL (and the one-shot jobs) are on an `internal` network only; web bridges it and nginx's."""
    networks, services = rendered["networks"], rendered["services"]

    def joined(name: str) -> set[str]:
        return set(services[name].get("networks") or {"default"})

    internal = {name for name, network in networks.items() if network and network.get("internal")}
    assert len(internal) == 1
    (private,) = internal
    for name in ("worker-1", "worker-2", "redis", "postgres", "migrate", "beat"):
        assert joined(name) == {private}, name
    assert private in joined("web") and len(joined("web")) == 2
    (front,) = joined("web") - {private}
    assert joined("nginx") == {front} and not networks[front].get("internal")
    # A worker for an `openai-compatible` upstream joins this one (the comment in compose.yml says how).
    assert "egress" in networks and not networks["egress"].get("internal")
    assert not any("egress" in joined(name) for name in services)


def test_redis_keeps_queued_answers_across_a_restart(rendered):
    """Append-only file on a volume, and no eviction: a restarted or full broker loses no queued task
    (chat/conversations/lifecycle.py queues again any that are lost all the same)."""
    redis = rendered["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v.split(":")[1] == "/data" for v in redis["volumes"])


# --- entrypoint and health probes


def _entrypoint(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env}
    return subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=environment)


@pytest.mark.parametrize("name", ["SECRET_KEY", "DATABASE_URL"])
def test_the_entrypoint_refuses_the_example_placeholders(name, rendered):
    """Starting with env.example's values unchanged stops at once, before any process starts."""
    # PORT=none: should the check ever pass, daphne fails at once instead of serving until the timeout.
    result = _entrypoint("web", PORT="none", **{name: rendered["services"]["web"]["environment"][name]})
    assert result.returncode == 64
    assert f"{name} still holds the placeholder" in result.stderr


def test_a_worker_for_a_model_missing_from_settings_stops_with_the_reason():
    result = _entrypoint("worker", WORKER_MODEL="no-such-model", SECRET_KEY="a-test-key")
    assert result.returncode == 1
    assert "WORKER_MODEL='no-such-model' is not a name in DEEPSEEK_MODELS" in result.stderr


@pytest.fixture
def probe():
    spec = importlib.util.spec_from_file_location("docker_probe", DOCKER / "probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_daphne(monkeypatch):
    """An HTTP server answering 200 on /healthz, a redirect on /moved; it records the request headers."""
    seen: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(dict(self.headers))
            status = {"/healthz": 200, "/moved": 301}.get(self.path, 503)
            self.send_response(status)
            if status == 301:
                self.send_header("Location", "https://example.com/healthz")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PORT", str(server.server_address[1]))
    yield seen
    server.shutdown()
    server.server_close()


def test_the_web_probe_asks_as_the_proxy_would(probe, fake_daphne, monkeypatch):
    monkeypatch.setenv("ALLOWED_HOSTS", "chat.example.com,localhost")
    assert probe.check_web("/healthz") is True
    assert fake_daphne[-1]["Host"] == "chat.example.com"
    assert fake_daphne[-1]["X-Forwarded-Proto"] == "https"


def test_the_web_probe_counts_only_a_200(probe, fake_daphne, monkeypatch):
    monkeypatch.setenv("ALLOWED_HOSTS", "*")
    assert probe.check_web("/moved") is False  # not followed: a redirect would leave the container
    assert probe.check_web("/missing") is False
    assert fake_daphne[-1]["Host"] == "localhost"


def test_the_web_probe_fails_when_nothing_listens(probe, monkeypatch):
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        monkeypatch.setenv("PORT", str(unused.getsockname()[1]))
    assert probe.check_web("/healthz") is False


def test_the_broker_probe_pings_redis(probe, monkeypatch, redis_url):
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert probe.check_broker() is True
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert probe.check_broker() is False


# --- the sizing table's inputs


def test_the_sizing_architectures_match_the_published_parameter_counts():
    spec = importlib.util.spec_from_file_location("docker_sizing", DOCKER / "sizing.py")
    sizing = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = sizing  # dataclasses look their module up while the class is being made
    try:
        spec.loader.exec_module(sizing)
    finally:
        del sys.modules[spec.name]
    published = {"1.5B": 1.78e9, "7B": 7.62e9, "14B": 14.77e9, "32B": 32.76e9, "70B": 70.55e9}
    for arch in sizing.MODELS:
        size = re.search(r"-(\d+(?:\.\d+)?B)$", arch.name).group(1)
        total = arch.linear_params() + arch.other_params()
        assert abs(total - published[size]) / published[size] < 0.01, (arch.name, total)


def test_the_images_carry_no_devtools():
    # The load suites and benchmarks stay out of the build context, so no COPY can bring them in.
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "chat/devtools" in ignored and "tests" in ignored
    for name, instructions in _stages().items():
        for instruction, args in instructions:
            if instruction in ("COPY", "ADD"):
                assert "devtools" not in args, f"stage {name}: {instruction} {args}"
