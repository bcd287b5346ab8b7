"""(e) Peers: LiteLLM's proxy, pinned, installed once into a cached venv, before a fake upstream.

`make bench-peers` (= `bench/run.py --peers`) adds the `litellm` target. The venv lives in
`$XDG_CACHE_HOME/spendgate-bench/litellm-<version>/` (default `~/.cache/...`) and is made
with `pip install 'litellm[proxy]==<version>'` the first time; that install is the only thing
the benchmark fetches from the internet. LiteLLM runs with one worker, no database, the local
model cost map and a master key, which is the key wrk presents.

Run `python bench/peers.py` to install (or check) the venv without benchmarking.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from procs import LOOPBACK, BenchError, Server, free_port

LITELLM_VERSION = "1.106.2"  # pinned on purpose: 1.107.0 was a compromised release
LITELLM_MODELS = ("gpt-4o-mini", "text-embedding-3-small")
INSTALL_TIMEOUT_S = 900
START_TIMEOUT_S = 180  # LiteLLM's imports alone take many seconds on 2 cores


class PeerUnavailable(BenchError):
    """A peer cannot be installed or started here; the harness skips it with this reason."""


def litellm_home() -> Path:
    """The cached install directory of the pinned LiteLLM."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "spendgate-bench" / f"litellm-{LITELLM_VERSION}"


def ensure_litellm() -> Path:
    """The `litellm` executable of the cached venv, installing it first if needed."""
    home = litellm_home()
    exe, marker = home / "venv" / "bin" / "litellm", home / ".installed"
    if marker.exists() and exe.exists():
        return exe
    home.mkdir(parents=True, exist_ok=True)
    print(f"installing litellm[proxy]=={LITELLM_VERSION} into {home} (once) ...", file=sys.stderr)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(home / "venv")],
        [str(home / "venv" / "bin" / "pip"), "install", "-q", "--upgrade", "pip"],
        [str(home / "venv" / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"],
    ]
    log = home / "install.log"
    with log.open("wb") as out:
        for argv in steps:
            try:
                done = subprocess.run(
                    argv, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_S
                )
            except subprocess.TimeoutExpired:
                raise PeerUnavailable(
                    f"`{' '.join(argv)}` took over {INSTALL_TIMEOUT_S} s"
                ) from None
            if done.returncode != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                raise PeerUnavailable(
                    f"`{' '.join(argv)}` failed (exit {done.returncode}; log {log}): "
                    + " / ".join(tail)
                )
    if not exe.exists():
        raise PeerUnavailable(f"the install left no {exe} (log {log})")
    marker.write_text(f"litellm[proxy]=={LITELLM_VERSION}\n")
    return exe


def litellm_config(upstream_base: str, upstream_key: str) -> dict[str, object]:
    """Every benchmarked model routed to the fake upstream, no retries, no callbacks."""
    models = [
        {
            "model_name": name,
            "litellm_params": {
                "model": f"openai/{name}",
                "api_base": upstream_base,
                "api_key": upstream_key,
            },
        }
        for name in LITELLM_MODELS
    ]
    return {"model_list": models, "litellm_settings": {"num_retries": 0, "request_timeout": 30}}


def start_litellm_server(
    work: Path, name: str, upstream_base: str, env: dict[str, str]
) -> tuple[Server, str, str]:
    """Start LiteLLM's proxy, one worker; returns it, its base URL and its master key."""
    exe = ensure_litellm()
    config = work / f"{name}.yaml"
    config.write_text(json.dumps(litellm_config(upstream_base, "sk-bench-upstream"), indent=2))
    port, master_key = free_port(), f"sk-{secrets.token_hex(16)}"
    env = env | {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the price list
        "LITELLM_MASTER_KEY": master_key,
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "NO_DOCS": "True",
        "DISABLE_ADMIN_UI": "True",
    }
    argv = [str(exe), "--config", str(config), "--host", LOOPBACK, "--port", str(port)]
    argv += ["--num_workers", "1"]
    home = work / name
    home.mkdir()
    server = Server(name, argv, work, env=env, cwd=home)
    base_url = f"http://{LOOPBACK}:{port}"
    try:  # with LITELLM_LOG=ERROR it logs no ready line
        server.wait_for_http(base_url + "/health/liveliness", timeout_s=START_TIMEOUT_S)
    except BenchError as exc:
        server.kill()
        raise PeerUnavailable(f"LiteLLM did not start: {exc}") from None
    except BaseException:
        server.kill()
        raise
    return server, base_url, master_key


if __name__ == "__main__":
    print(ensure_litellm())
