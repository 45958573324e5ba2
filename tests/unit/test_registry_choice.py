"""Which client fetches a registry image (oci/registryconf.py): cfsboot's own only when the
containers configuration (policy, registries.conf, auth files, proxies, certs.d) asks
nothing skopeo alone does; a fake /etc/containers and $HOME for each case."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from cfsboot.errors import CfsbootError
from cfsboot.oci.reference import parse
from cfsboot.oci.registryconf import Choice, choose

REF = parse("docker://reg.example:5000/os/base:1")
ACCEPT = {"default": [{"type": "insecureAcceptAnything"}]}
NATIVE = "native client: nothing in the containers configuration needs skopeo"


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    d = tmp_path / "etc"
    d.mkdir()
    (d / "policy.json").write_text(json.dumps(ACCEPT))
    return d


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "home").mkdir()
    return {"HOME": str(tmp_path / "home")}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_plain_configuration_is_native(etc: Path, env: dict[str, str]) -> None:
    assert choose(REF, None, env, etc) == Choice(True, NATIVE, True, None)
    assert choose(REF, False, env, etc) == Choice(True, NATIVE, False, None)


def test_other_transports_and_the_override(etc: Path, env: dict[str, str]) -> None:
    assert choose(parse("oci:/x"), None, env, etc).native is False
    assert choose(REF, None, {**env, "CFSBOOT_REGISTRY_CLIENT": "skopeo"}, etc) == Choice(
        False, "skopeo: CFSBOOT_REGISTRY_CLIENT=skopeo"
    )
    with pytest.raises(CfsbootError, match="CFSBOOT_REGISTRY_CLIENT='curl' is not one of"):
        choose(REF, None, {**env, "CFSBOOT_REGISTRY_CLIENT": "curl"}, etc)


SIGNED = [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k.gpg"}]


@pytest.mark.parametrize(
    ("scopes", "native"),
    [
        ({"reg.example:5000/os/base:1": SIGNED}, False),
        ({"reg.example:5000/os/base": SIGNED}, False),
        ({"reg.example:5000/os": SIGNED}, False),
        ({"reg.example:5000": SIGNED}, False),
        ({"*.example": SIGNED}, False),
        ({"": SIGNED}, False),
        ({"reg.example:5000/os/other": SIGNED, "quay.io": SIGNED}, True),
        # the most specific scope wins
        ({"reg.example:5000": SIGNED, "reg.example:5000/os": ACCEPT["default"]}, True),
    ],
)
def test_policy_scopes(
    etc: Path, env: dict[str, str], scopes: dict[str, object], native: bool
) -> None:
    (etc / "policy.json").write_text(json.dumps({**ACCEPT, "transports": {"docker": scopes}}))
    choice = choose(REF, None, env, etc)
    assert choice.native is native
    if not native:
        assert choice.why == (
            f"skopeo: {etc}/policy.json asks more than insecureAcceptAnything "
            "for reg.example:5000/os/base:1"
        )


def test_policy_default_reject_and_the_users_policy(etc: Path, env: dict[str, str]) -> None:
    (etc / "policy.json").write_text(json.dumps({"default": [{"type": "reject"}]}))
    assert choose(REF, None, env, etc).native is False
    _write(Path(env["HOME"]) / ".config/containers/policy.json", json.dumps(ACCEPT))
    assert choose(REF, None, env, etc).native is True  # the user's file replaces /etc's
    (etc / "policy.json").unlink()
    (Path(env["HOME"]) / ".config/containers/policy.json").unlink()
    assert choose(REF, None, env, etc).why.startswith(f"skopeo: {etc}/policy.json cannot be read")


@pytest.mark.parametrize(
    ("entry", "native", "verify"),
    [
        ('location = "reg.example:5000"\ninsecure = true', True, False),
        ('location = "reg.example:5000"\ninsecure = false', True, True),
        (
            'prefix = "reg.example:5000/os"\nlocation = "reg.example:5000/os"\ninsecure = true',
            True,
            False,
        ),
        ('location = "reg.example:5000"\nblocked = true', False, None),
        ('prefix = "reg.example:5000"\nlocation = "mirror.example"', False, None),
        ('location = "reg.example:5000"\n[[registry.mirror]]\nlocation = "m.example"', False, None),
        ('prefix = "*.example"\nlocation = "x.example"', False, None),
        ('location = "reg.example:5000/os/base-other"\nblocked = true', True, True),
        ('location = "other.example"\nblocked = true', True, True),
    ],
)
def test_registries_conf(
    etc: Path, env: dict[str, str], entry: str, native: bool, verify: bool | None
) -> None:
    _write(etc / "registries.conf.d/50-test.conf", f"[[registry]]\n{entry}\n")
    choice = choose(REF, None, env, etc)
    assert choice.native is native
    if native:
        assert choice.tls_verify is verify
        assert choose(REF, True, env, etc).tls_verify is True  # --src-tls-verify wins
    else:
        assert choice.why.startswith(f"skopeo: {etc}/registries.conf.d/50-test.conf has an entry")


def test_registries_conf_files(etc: Path, env: dict[str, str], tmp_path: Path) -> None:
    insecure = '[[registry]]\nlocation = "reg.example:5000"\ninsecure = true\n'
    _write(Path(env["HOME"]) / ".config/containers/registries.conf.d/50-x.conf", insecure)
    assert choose(REF, None, env, etc).tls_verify is False
    _write(etc / "registries.conf", '[[registry]]\nlocation = "reg.example:5000"\n')
    assert choose(REF, None, env, etc) == Choice(
        False, "skopeo: registries.conf entries for reg.example:5000 disagree on insecure"
    )
    _write(tmp_path / "own.conf", 'credential-helpers = ["secretservice"]\n')
    choice = choose(
        REF, None, {**env, "CONTAINERS_REGISTRIES_CONF": str(tmp_path / "own.conf")}, etc
    )
    assert choice.why == f"skopeo: {tmp_path}/own.conf names credential helpers"
    _write(tmp_path / "own.conf", "[registries.block]\nregistries = ['reg.example:5000']\n")
    choice = choose(
        REF, None, {**env, "CONTAINERS_REGISTRIES_CONF": str(tmp_path / "own.conf")}, etc
    )
    assert choice.why == f"skopeo: {tmp_path}/own.conf blocks reg.example:5000"


def _auths(path: Path, doc: dict[str, object]) -> None:
    _write(path, json.dumps(doc))


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def test_auth_files(etc: Path, env: dict[str, str], tmp_path: Path) -> None:
    home = Path(env["HOME"])
    _auths(
        home / ".docker/config.json",
        {"auths": {"https://reg.example:5000/v1/": {"auth": _b64("d:1")}}},
    )
    assert choose(REF, None, env, etc).credentials == ("d", "1")
    _auths(
        home / ".config/containers/auth.json",
        {"auths": {"reg.example:5000": {"auth": _b64("c:2")}}},
    )
    assert choose(REF, None, env, etc).credentials == ("c", "2")  # before ~/.docker
    run = tmp_path / "run"
    _auths(run / "containers/auth.json", {"auths": {"reg.example:5000": {"auth": _b64("r:3")}}})
    assert choose(REF, None, {**env, "XDG_RUNTIME_DIR": str(run)}, etc).credentials == ("r", "3")
    own = tmp_path / "own.json"
    _auths(own, {"auths": {"other.example": {"auth": _b64("o:4")}}})
    # a file that does not name the registry: the next one's
    assert choose(REF, None, {**env, "REGISTRY_AUTH_FILE": str(own)}, etc).credentials == ("c", "2")


HOST = "reg.example:5000"


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({"credHelpers": {HOST: "ecr-login"}}, " names a credential helper"),
        ({"credsStore": "desktop"}, " names a credential helper"),
        ({"auths": {HOST: {"identitytoken": "x"}}}, f": credentials for {HOST} cfsboot cannot use"),
        (
            {"auths": {f"{HOST}/os": {"auth": "eDp5"}}},
            f" has repository-scoped credentials for {HOST}",
        ),
        ({"auths": {HOST: {"auth": "!!"}}}, f": credentials for {HOST} not understood"),
    ],
)
def test_auth_entries_only_skopeo_can_use(
    etc: Path, env: dict[str, str], tmp_path: Path, doc: dict[str, object], why: str
) -> None:
    own = tmp_path / "own.json"
    _auths(own, doc)
    choice = choose(REF, None, {**env, "REGISTRY_AUTH_FILE": str(own)}, etc)
    assert choice.why == f"skopeo: {own}{why}"


def test_proxy_and_certs(etc: Path, env: dict[str, str], tmp_path: Path) -> None:
    proxied = {**env, "https_proxy": "http://proxy:3128"}
    assert choose(REF, None, proxied, etc).why == "skopeo: $https_proxy is set"
    assert choose(parse("docker://127.0.0.1:5000/os:1"), None, proxied, etc).native is True
    (etc / "certs.d/reg.example:5000").mkdir(parents=True)
    assert choose(REF, None, env, etc).why == f"skopeo: {etc}/certs.d/reg.example:5000 exists"
    # forced, the native client goes ahead anyway
    assert choose(REF, None, {**env, "CFSBOOT_REGISTRY_CLIENT": "native"}, etc).native is True
