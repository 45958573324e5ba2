"""A local container registry for the VM tests (Debian's docker-registry, distribution 2.x).

It listens on 127.0.0.1:5000, which guests on QEMU user networking reach as
10.0.2.2:5000 (the test OS marks that registry insecure in
/etc/containers/registries.conf.d). Storage and config live in a temporary
directory; the registry is stopped when the context ends.

    with registry.running(workdir) as reg:
        digest = reg.push(layout, "v2")        # docker://127.0.0.1:5000/cfsboot/testos:v2
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BINARY = "docker-registry"
HOST = "127.0.0.1"
PORT = 5000
GUEST_HOST = "10.0.2.2"  # the host's loopback as QEMU user networking shows it
REPOSITORY = "cfsboot/testos"
START_TIMEOUT = 30.0


def config_yaml(
    storage: Path, host: str = HOST, port: int = PORT, *, access_log: bool = False
) -> str:
    """The registry's config file (distribution's configuration format, version 0.1).

    access_log: one line per request in registry.log (combined log format: the status
    and the bytes sent), for tests and benchmarks that count what a client fetched.
    """
    return f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: {"false" if access_log else "true"}
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: {host}:{port}
"""


def registries_conf(host: str = HOST, port: int = PORT) -> str:
    """A containers-registries.conf(5) that lets skopeo on the host use it over plain HTTP."""
    return f'[[registry]]\nlocation = "{host}:{port}"\ninsecure = true\n'


@dataclass
class Registry:
    """A running registry; push() puts OCI layouts into it."""

    workdir: Path
    process: subprocess.Popen[bytes]
    host: str = HOST
    port: int = PORT

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def guest_address(self) -> str:
        return f"{GUEST_HOST}:{self.port}"

    def ref(self, tag: str, repository: str = REPOSITORY) -> str:
        """docker://HOST:PORT/repository:tag, the reference on the host."""
        return f"docker://{self.address}/{repository}:{tag}"

    def guest_ref(self, tag: str, repository: str = REPOSITORY) -> str:
        """The same image as a guest on QEMU user networking names it."""
        return f"docker://{self.guest_address}/{repository}:{tag}"

    def client_env(self) -> dict[str, str]:
        """Environment for host-side skopeo (also through cfsboot) to use it without TLS.

        A drop-in under $HOME/.config/containers/registries.conf.d: bookworm's skopeo
        1.9 does not read CONTAINERS_REGISTRIES_CONF, and cfsboot passes HOME on.
        """
        home = self.workdir / "client-home"
        dropin = home / ".config/containers/registries.conf.d/50-cfsboot-test-registry.conf"
        if not dropin.exists():
            dropin.parent.mkdir(parents=True, exist_ok=True)
            dropin.write_text(registries_conf(self.host, self.port))
        return {"HOME": str(home)}

    def push(self, layout: Path, tag: str, repository: str = REPOSITORY) -> str:
        """skopeo copy oci:layout:tag to the registry; returns the pushed manifest digest."""
        digest_file = self.workdir / f"push-{tag}.digest"
        argv = [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"--digestfile={digest_file}",
            f"oci:{layout}:{tag}",
            self.ref(tag, repository),
        ]
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        if proc.returncode != 0:
            lines = proc.stderr.decode(errors="replace").strip().splitlines()
            raise RuntimeError(
                f"skopeo copy to {self.ref(tag, repository)} failed with exit code "
                f"{proc.returncode}: {lines[-1] if lines else '(no output)'}"
            )
        return digest_file.read_text().strip()

    def manifest_digest(self, tag: str, repository: str = REPOSITORY) -> str:
        """What the registry serves for tag (Docker-Content-Digest of a HEAD request)."""
        req = urllib.request.Request(
            f"http://{self.address}/v2/{repository}/manifests/{tag}",
            method="HEAD",
            headers={
                "Accept": "application/vnd.oci.image.manifest.v1+json, "
                "application/vnd.docker.distribution.manifest.v2+json"
            },
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return str(resp.headers["Docker-Content-Digest"])

    def tags(self, repository: str = REPOSITORY) -> list[str]:
        url = f"http://{self.address}/v2/{repository}/tags/list"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return list(json.load(resp).get("tags") or [])


def _answers(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/v2/", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def running(
    workdir: Path, host: str = HOST, port: int = PORT, *, access_log: bool = False
) -> Iterator[Registry]:
    """Start a registry with its storage under workdir; stop it (and keep the log) at the end."""
    if shutil.which(BINARY) is None:
        raise RuntimeError(f"{BINARY} not found (apt-get install docker-registry)")
    if _answers(host, port):
        raise RuntimeError(f"something already answers on {host}:{port} (another test registry?)")
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    config = workdir / "config.yml"
    config.write_text(config_yaml(storage, host, port, access_log=access_log))
    log = open(workdir / "registry.log", "wb")
    proc = subprocess.Popen(
        [BINARY, "serve", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        # Its own process group: a stop never reaches the test runner.
        start_new_session=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir)},
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(host, port):
            if proc.poll() is not None:
                tail = (workdir / "registry.log").read_text(errors="replace").strip()
                raise RuntimeError(f"{BINARY} exited with status {proc.returncode}: {tail[-500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{BINARY} did not answer on {host}:{port} in {START_TIMEOUT} s")
            time.sleep(0.1)
        yield Registry(workdir, proc, host, port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
