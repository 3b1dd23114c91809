"""Drive the real agent CLIs (Claude Code, Codex CLI) from ``tests/agents/node_modules`` offline.

Used by ``tests/agents/test_harness_capture.py`` (against a recording fake upstream) and by the
gateway's end-to-end tests (against Gatehouse itself). Import it by path, e.g.::

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agents"))
    import harness

Every run is isolated:

* the child gets a *fresh* environment (nothing inherited from the caller: no stray
  ``ANTHROPIC_*``/``OPENAI_*``/proxy variables), ``HOME``, ``TMPDIR``, ``CODEX_HOME`` and
  ``CLAUDE_CONFIG_DIR`` pointing into a throwaway directory, so the real ``~/.claude``,
  ``~/.claude.json`` and ``~/.codex`` are never read or written;
* all non-essential traffic is switched off (Claude Code:
  ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`` + the individual ``DISABLE_*`` switches; Codex:
  ``analytics.enabled = false`` and ``features.plugins = false`` in ``config.toml``);
* as a backstop, ``HTTP(S)_PROXY`` points at a local *egress trap* that refuses and records
  every proxied request, while ``NO_PROXY`` exempts the host of ``base_url``. Anything a CLI
  tries to reach besides the gateway shows up in ``CompletedRun.egress`` instead of leaving
  the machine.

Only the standard library is used here, so the module is importable anywhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "CODEX_ENV_KEY",
    "CompletedRun",
    "EgressTrap",
    "agents_dir",
    "claude_code_env",
    "codex_config_toml",
    "ensure_installed",
    "install_reason",
    "pinned_versions",
    "require_agent_clis",
    "run_claude_code",
    "run_codex",
]

CODEX_ENV_KEY = "GATEHOUSE_TOKEN"
CODEX_PROVIDER_ID = "gatehouse"

# Claude Code: the umbrella switch covers telemetry (/api/event_logging), feature flags
# (/api/eval/sdk-*), /api/directory/server-urls, the HEAD {base}/api/hello pre-connect and the
# auto-updater; the individual switches are belt and braces for older/newer releases.
CLAUDE_QUIET_ENV: dict[str, str] = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
}

_INSTALL_LOCK = threading.Lock()
_install_state: tuple[bool, str] | None = None


# --------------------------------------------------------------------------- installation


def agents_dir() -> Path:
    """``tests/agents`` (holds package.json, package-lock.json and node_modules)."""
    return Path(__file__).resolve().parent


def pinned_versions() -> dict[str, str]:
    """``{"@anthropic-ai/claude-code": "2.1.329", "@openai/codex": "0.169.0"}`` from package.json."""
    deps: dict[str, str] = json.loads((agents_dir() / "package.json").read_text())["dependencies"]
    return dict(deps)


def _node() -> str | None:
    return shutil.which("node")


def _platform_suffix() -> str:
    """npm platform-package suffix, e.g. ``linux-x64`` or ``linux-x64-musl``."""
    system = {"Linux": "linux", "Darwin": "darwin", "Windows": "win32"}.get(platform.system(), "unknown")
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    suffix = f"{system}-{arch}"
    if system == "linux" and platform.libc_ver()[0] != "glibc":
        suffix += "-musl"
    return suffix


def _claude_executable() -> Path:
    """The native Claude Code binary.

    npm's postinstall (``install.cjs``) hard-links the platform binary over the 500-byte shell
    stub ``bin/claude.exe``. If install scripts were skipped (``--ignore-scripts``, or an npm
    whose ``allowScripts`` policy blocks it), fall back to the platform package's binary.
    """
    nm = agents_dir() / "node_modules" / "@anthropic-ai"
    wrapper = nm / "claude-code" / "bin" / "claude.exe"
    if wrapper.is_file() and wrapper.stat().st_size > 1_000_000:
        return wrapper
    return nm / f"claude-code-{_platform_suffix()}" / "claude"


def _codex_launcher() -> Path:
    """``bin/codex.js``: picks the native binary from ``@openai/codex-<platform>`` (no download)."""
    return agents_dir() / "node_modules" / "@openai" / "codex" / "bin" / "codex.js"


def _installed_version(package: str) -> str | None:
    try:
        data = json.loads((agents_dir() / "node_modules" / package / "package.json").read_text())
    except (OSError, ValueError):
        return None
    version = data.get("version")
    return version if isinstance(version, str) else None


def _missing() -> list[str]:
    problems = []
    for package, version in pinned_versions().items():
        have = _installed_version(package)
        if have != version:
            problems.append(f"{package}@{version} (installed: {have or 'none'})")
    if not problems:
        if not _claude_executable().is_file():
            problems.append(f"claude native binary ({_claude_executable()})")
        if not _codex_launcher().is_file():
            problems.append(f"codex launcher ({_codex_launcher()})")
    return problems


def _check_or_install() -> tuple[bool, str]:
    node = _node()
    if node is None:
        return False, "node is not on PATH"
    if not _missing():
        return True, "installed"
    npm = shutil.which("npm")
    if npm is None:
        return False, "node is present but npm is not on PATH; cannot run `npm ci --prefix tests/agents`"
    # One installer at a time, across processes (pytest-xdist workers) too.
    lock_path = Path(tempfile.gettempdir()) / "gatehouse-agents-npm-ci.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _missing():
                return True, "installed (by a concurrent process)"
            proc = subprocess.run(
                [npm, "ci", "--prefix", str(agents_dir()), "--no-audit", "--no-fund"],
                cwd=agents_dir(),
                capture_output=True,
                text=True,
                timeout=900,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return False, "`npm ci --prefix tests/agents` timed out after 900s"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-2000:]
        return False, f"`npm ci --prefix tests/agents` failed (exit {proc.returncode}):\n{tail}"
    still = _missing()
    if still:
        return False, "after `npm ci` still missing: " + ", ".join(still)
    return True, "installed by npm ci"


def ensure_installed() -> bool:
    """True when node and the pinned CLIs are usable; installs them once with ``npm ci`` if needed.

    Returns False when node is absent or the install fails; :func:`install_reason` says why.
    The result is cached for the life of the process.
    """
    global _install_state
    with _INSTALL_LOCK:
        if _install_state is None or not _install_state[0]:
            _install_state = _check_or_install()
        return _install_state[0]


def install_reason() -> str:
    """Why the last :func:`ensure_installed` returned what it did."""
    return _install_state[1] if _install_state else "ensure_installed() has not run"


def require_agent_clis() -> None:
    """For tests: skip when node itself is absent, fail when node is there but the CLIs cannot be had."""
    import pytest

    if _node() is None:
        pytest.skip("node is not installed; the agent CLI tests need node + npm")
    if not ensure_installed():
        pytest.fail(f"agent CLIs unavailable: {install_reason()}")


# --------------------------------------------------------------------------- egress trap


class EgressTrap:
    """A local "proxy" that accepts connections, records the first request line and answers 403.

    Used as ``HTTP_PROXY``/``HTTPS_PROXY`` for the CLIs so that any attempt to reach the
    internet is refused locally and recorded (``CONNECT api.anthropic.com:443 HTTP/1.1``).
    """

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="egress-trap", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(2)
                data = b""
                with contextlib.suppress(OSError):
                    while b"\r\n" not in data and len(data) < 8192:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                line = data.split(b"\r\n", 1)[0].decode("latin-1", "replace")
                with self._lock:
                    self.attempts.append(line or "<no request line>")
                with contextlib.suppress(OSError):
                    conn.sendall(
                        b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 25\r\n"
                        b"connection: close\r\n\r\ngatehouse test: no egress"
                    )

    def __enter__(self) -> EgressTrap:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.attempts)


# --------------------------------------------------------------------------- running


@dataclass
class CompletedRun:
    """Outcome of one CLI invocation."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    json: Any = None  # Claude Code: the --output-format json object; Codex: list of --json events
    duration: float = 0.0
    timed_out: bool = False
    home: Path | None = None  # None once the throwaway HOME has been deleted
    egress: list[str] = field(default_factory=list)  # request lines refused by the egress trap

    @property
    def text(self) -> str | None:
        """The agent's final answer text, if the output could be parsed."""
        if isinstance(self.json, dict):
            result = self.json.get("result")
            return result if isinstance(result, str) else None
        if isinstance(self.json, list):
            texts = [
                ev["item"].get("text")
                for ev in self.json
                if isinstance(ev, dict)
                and ev.get("type") == "item.completed"
                and isinstance(ev.get("item"), dict)
                and ev["item"].get("type") == "agent_message"
            ]
            return texts[-1] if texts else None
        return None

    @property
    def session_id(self) -> str | None:
        """Claude Code ``session_id`` / Codex ``thread_id`` (what the CLI sends as a session header)."""
        if isinstance(self.json, dict):
            sid = self.json.get("session_id")
            return sid if isinstance(sid, str) else None
        if isinstance(self.json, list):
            for ev in self.json:
                if isinstance(ev, dict) and ev.get("type") == "thread.started":
                    tid = ev.get("thread_id")
                    return tid if isinstance(tid, str) else None
        return None

    def describe(self) -> str:
        """Multi-line summary for assertion messages."""
        return (
            f"argv={self.argv!r}\nreturncode={self.returncode} timed_out={self.timed_out} "
            f"duration={self.duration:.2f}s egress={self.egress}\n"
            f"--- stdout (tail) ---\n{self.stdout[-4000:]}\n--- stderr (tail) ---\n{self.stderr[-4000:]}"
        )


def _child_path() -> str:
    parts = []
    node = _node()
    if node:
        parts.append(str(Path(node).resolve().parent))
    parts += ["/usr/local/bin", "/usr/bin", "/bin"]
    return os.pathsep.join(dict.fromkeys(parts))


def _no_proxy_for(base_url: str) -> str:
    hosts = ["127.0.0.1", "localhost", "::1"]
    host = urlsplit(base_url).hostname
    if host and host not in hosts:
        hosts.append(host)
    return ",".join(hosts)


def _base_env(home: Path, base_url: str, trap: EgressTrap | None) -> dict[str, str]:
    tmp = home / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": _child_path(),
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "USER": os.environ.get("USER", "gatehouse-test"),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "NO_COLOR": "1",
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
    }
    if trap is not None:
        no_proxy = _no_proxy_for(base_url)
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            env[name] = trap.url
        env["NO_PROXY"] = env["no_proxy"] = no_proxy
    return env


@contextlib.contextmanager
def _throwaway_home(home: Path | None, keep: bool) -> Iterator[Path]:
    real_home = Path(os.path.expanduser("~")).resolve()
    if home is not None:
        home = Path(home).resolve()
        if home == real_home:
            raise ValueError("refusing to run an agent CLI with the real HOME")
        home.mkdir(parents=True, exist_ok=True)
        yield home
        return
    made = Path(tempfile.mkdtemp(prefix="gatehouse-agent-home-")).resolve()
    try:
        yield made
    finally:
        if not keep:
            shutil.rmtree(made, ignore_errors=True)


def _execute(
    argv: list[str], env: Mapping[str, str], cwd: Path, timeout: float
) -> tuple[int, str, str, bool]:
    """Run in its own process group; on timeout SIGTERM then SIGKILL the whole group."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        rc = proc.returncode if proc.returncode is not None else -signal.SIGKILL
        return rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), True


def _parse_json_object(stdout: str) -> Any:
    text = stdout.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        with contextlib.suppress(ValueError):
            return json.loads(line)
    return None


def _parse_jsonl(stdout: str) -> list[Any] | None:
    events = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events or None


def claude_code_env(base_url: str, api_key: str, *, auth: str = "api-key") -> dict[str, str]:
    """The variables that point Claude Code at a gateway (what docs/compatibility.md tells users).

    ``auth="api-key"`` -> ``ANTHROPIC_API_KEY`` (sent as ``x-api-key``);
    ``auth="bearer"`` -> ``ANTHROPIC_AUTH_TOKEN`` (sent as ``Authorization: Bearer``).
    """
    if auth not in ("api-key", "bearer"):
        raise ValueError("auth must be 'api-key' or 'bearer'")
    key_var = "ANTHROPIC_API_KEY" if auth == "api-key" else "ANTHROPIC_AUTH_TOKEN"
    return {"ANTHROPIC_BASE_URL": base_url.rstrip("/"), key_var: api_key, **CLAUDE_QUIET_ENV}


def run_claude_code(
    base_url: str,
    api_key: str,
    prompt: str,
    workdir: Path,
    timeout: float = 120,
    extra_env: Mapping[str, str] | None = None,
    *,
    model: str | None = None,
    auth: str = "api-key",
    allowed_tools: Sequence[str] | None = None,
    skip_permissions: bool = False,
    extra_args: Sequence[str] = (),
    home: Path | None = None,
    keep_home: bool = False,
    block_egress: bool = True,
) -> CompletedRun:
    """One non-interactive Claude Code turn: ``claude -p PROMPT --output-format json``.

    ``base_url`` is what a user puts in ``ANTHROPIC_BASE_URL``, e.g.
    ``http://127.0.0.1:8080/bridge/anthropic`` (Claude Code appends ``/v1/messages?beta=true``).
    ``allowed_tools`` pre-approves tools (``["Bash", "Read"]``); ``skip_permissions`` passes
    ``--dangerously-skip-permissions``, which Claude Code refuses as root unless ``IS_SANDBOX=1``
    (set here when running as root).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [str(_claude_executable()), "-p", "--output-format", "json"]
    if model:
        argv += ["--model", model]
    if allowed_tools:
        argv += ["--allowedTools", ",".join(allowed_tools)]
    if skip_permissions:
        argv.append("--dangerously-skip-permissions")
    argv += [*extra_args, "--", prompt]  # "--": --allowedTools is variadic, and prompts may start with "-"
    with _throwaway_home(home, keep_home) as h, _maybe_trap(block_egress) as trap:
        env = _base_env(h, base_url, trap)
        env.update(claude_code_env(base_url, api_key, auth=auth))
        if skip_permissions and hasattr(os, "geteuid") and os.geteuid() == 0:
            env["IS_SANDBOX"] = "1"
        # Not needed for -p (print mode skips onboarding and the custom-key prompt), but keeps an
        # accidental interactive start from blocking on the first-run screens.
        (h / ".claude").mkdir(parents=True, exist_ok=True)
        claude_json = {
            "hasCompletedOnboarding": True,
            "customApiKeyResponses": {"approved": [api_key[-20:]], "rejected": []},
        }
        (h / ".claude.json").write_text(json.dumps(claude_json))
        if extra_env:
            env.update(extra_env)
        started = time.monotonic()
        rc, out, err, timed_out = _execute(argv, env, workdir, timeout)
        duration = time.monotonic() - started
        egress = trap.snapshot() if trap else []
    return CompletedRun(
        argv=argv,
        returncode=rc,
        stdout=out,
        stderr=err,
        json=_parse_json_object(out),
        duration=duration,
        timed_out=timed_out,
        home=h if (home is not None or keep_home) else None,
        egress=egress,
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, Mapping):  # inline table, e.g. http_headers = { "X-Agent" = "ci" }
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"unsupported TOML value {value!r}")


def codex_config_toml(
    base_url: str,
    model: str,
    *,
    env_key: str = CODEX_ENV_KEY,
    provider_extra: Mapping[str, Any] | None = None,
    extra_config: str = "",
) -> str:
    """``$CODEX_HOME/config.toml`` that routes Codex to a gateway over the Responses API.

    ``base_url`` ends with ``/v1`` (Codex appends ``/responses``), e.g.
    ``http://127.0.0.1:8080/bridge/openai/v1``. ``provider_extra`` adds keys to the provider
    table (``request_max_retries``, ``stream_max_retries``, ``stream_idle_timeout_ms``,
    ``http_headers = {...}``, ...).
    """
    provider = {
        "name": "Gatehouse",
        "base_url": base_url.rstrip("/"),
        "env_key": env_key,
        "wire_api": "responses",
        "supports_websockets": False,
        **(provider_extra or {}),
    }
    lines = [
        f"model_provider = {_toml_value(CODEX_PROVIDER_ID)}",
        f"model = {_toml_value(model)}",
        'approval_policy = "never"',
        "check_for_update_on_startup = false",
        *([extra_config.strip()] if extra_config.strip() else []),
        "",
        "[analytics]",
        "enabled = false  # otherwise: POST https://ab.chatgpt.com/otlp/v1/metrics",
        "",
        "[features]",
        "plugins = false  # otherwise: git ls-remote github.com/openai/plugins, api.github.com, chatgpt.com",
        "",
        f"[model_providers.{CODEX_PROVIDER_ID}]",
        *(f"{k} = {_toml_value(v)}" for k, v in provider.items()),
        "",
    ]
    return "\n".join(lines)


def run_codex(
    base_url: str,
    api_key: str,
    prompt: str,
    workdir: Path,
    model: str,
    timeout: float = 180,
    extra_env: Mapping[str, str] | None = None,
    *,
    sandbox: str = "read-only",
    provider_extra: Mapping[str, Any] | None = None,
    extra_config: str = "",
    extra_args: Sequence[str] = (),
    home: Path | None = None,
    keep_home: bool = False,
    block_egress: bool = True,
) -> CompletedRun:
    """One non-interactive Codex turn: ``codex exec --json --skip-git-repo-check --sandbox ... PROMPT``.

    ``base_url`` is the provider ``base_url`` and ends with ``/v1``
    (``http://127.0.0.1:8080/bridge/openai/v1``); the key travels as ``Authorization: Bearer``
    via ``env_key = "GATEHOUSE_TOKEN"``. ``sandbox`` is ``read-only``, ``workspace-write`` or
    ``danger-full-access``; the first two need bubblewrap namespaces, which containers often
    forbid (commands then fail with ``bwrap: Creating new namespace failed``); text-only turns
    never touch the sandbox.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    node = _node()
    if node is None:
        raise RuntimeError("node is not on PATH")
    argv = [
        node,
        str(_codex_launcher()),
        "exec",
        "--json",
        "--skip-git-repo-check",
        "--sandbox",
        sandbox,
        *extra_args,
        "--",
        prompt,
    ]
    with _throwaway_home(home, keep_home) as h, _maybe_trap(block_egress) as trap:
        codex_home = h / ".codex"
        codex_home.mkdir(parents=True, exist_ok=True)
        (codex_home / "config.toml").write_text(
            codex_config_toml(base_url, model, provider_extra=provider_extra, extra_config=extra_config)
        )
        env = _base_env(h, base_url, trap)
        env["CODEX_HOME"] = str(codex_home)
        env[CODEX_ENV_KEY] = api_key
        if extra_env:
            env.update(extra_env)
        started = time.monotonic()
        rc, out, err, timed_out = _execute(argv, env, workdir, timeout)
        duration = time.monotonic() - started
        egress = trap.snapshot() if trap else []
    return CompletedRun(
        argv=argv,
        returncode=rc,
        stdout=out,
        stderr=err,
        json=_parse_jsonl(out),
        duration=duration,
        timed_out=timed_out,
        home=h if (home is not None or keep_home) else None,
        egress=egress,
    )


@contextlib.contextmanager
def _maybe_trap(enabled: bool) -> Iterator[EgressTrap | None]:
    if not enabled:
        yield None
        return
    with EgressTrap() as trap:
        yield trap
