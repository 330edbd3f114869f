"""One place builds the client configuration (aegis.k8s.client): every kubeconfig form the
official loader understands, and the in-pod form, reach kopf's login as usable credentials."""

from __future__ import annotations

import base64
import datetime
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from aegis.k8s import client as k8s_client


def _kubeconfig(tmp_path: Path, user: dict[str, Any]) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }))
    return path


@pytest.fixture
def no_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG",
                "AEGIS_TOKEN_REFRESH_SECONDS"):
        monkeypatch.delenv(key, raising=False)


def test_a_kubeconfig_bearer_token_reaches_kopf_as_a_bearer_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_pod: None
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path, {"token": "abc.def"})))
    found = k8s_client.credentials(k8s_client.load_configuration())
    assert (found.scheme, found.token) == ("Bearer", "abc.def")
    assert found.server == "https://127.0.0.1:6443"
    assert found.expiration is None  # a static token needs no re-login


def test_an_exec_plugin_token_is_fetched_by_the_clients_loader_and_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_pod: None
) -> None:
    expiry = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    credential = {"apiVersion": "client.authentication.k8s.io/v1beta1",
                  "kind": "ExecCredential",
                  "status": {"token": "from-plugin", "expirationTimestamp": expiry}}
    plugin = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                       "command": sys.executable,
                       "args": ["-c", f"print({json.dumps(json.dumps(credential))})"],
                       "interactiveMode": "Never"}}
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path, plugin)))
    found = k8s_client.credentials(k8s_client.load_configuration())
    assert (found.scheme, found.token) == ("Bearer", "from-plugin")
    assert found.expiration is not None  # kopf asks again, and the loader's hook renews it


def test_client_certificates_reach_kopf_as_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_pod: None
) -> None:
    user = {"client-certificate-data": base64.b64encode(b"CERT").decode(),
            "client-key-data": base64.b64encode(b"KEY").decode()}
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path, user)))
    found = k8s_client.credentials(k8s_client.load_configuration())
    assert found.token is None and found.scheme is None
    assert found.certificate_path and Path(found.certificate_path).read_bytes() == b"CERT"
    assert found.private_key_path and Path(found.private_key_path).read_bytes() == b"KEY"


def test_basic_auth_reaches_kopf_as_username_and_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_pod: None
) -> None:
    user = {"username": "admin", "password": "s3cret:with-colon"}
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path, user)))
    found = k8s_client.credentials(k8s_client.load_configuration())
    assert (found.username, found.password, found.token) == ("admin", "s3cret:with-colon", None)


def _mount(tmp_path: Path, token: str = "tok-1") -> Path:
    mount = tmp_path / "sa"
    mount.mkdir()
    (mount / "token").write_text(token + "\n")
    (mount / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    return mount


def test_in_a_pod_the_mounted_token_is_used_and_reread_after_the_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_pod: None
) -> None:
    mount = _mount(tmp_path)
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443",
           "AEGIS_SERVICEACCOUNT_DIR": str(mount)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AEGIS_TOKEN_REFRESH_SECONDS", "0")
    configuration = k8s_client.load_configuration()
    assert configuration.host == "https://10.0.0.1:443"
    assert configuration.ssl_ca_cert == str(mount / "ca.crt")
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    first = k8s_client.credentials(configuration, now)
    assert (first.scheme, first.token) == ("Bearer", "tok-1")
    assert first.expiration == now  # period 0: kopf asks on every use
    (mount / "token").write_text("tok-2")
    assert k8s_client.credentials(configuration, now).token == "tok-2"
    # The official client's own requests read the same hook.
    assert configuration.get_api_key_with_prefix("BearerToken") == "Bearer tok-2"


def test_a_token_file_gone_for_a_moment_keeps_the_last_good_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_pod: None
) -> None:
    mount = _mount(tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    monkeypatch.setenv("AEGIS_SERVICEACCOUNT_DIR", str(mount))
    monkeypatch.setenv("AEGIS_TOKEN_REFRESH_SECONDS", "0")
    configuration = k8s_client.load_configuration()
    assert configuration.host == "https://[fd00::1]:6443"
    (mount / "token").write_text("")  # kubelet's atomic swap seen half-way
    assert k8s_client.credentials(configuration).token == "tok-1"


def test_in_a_pod_without_a_ca_the_error_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_pod: None
) -> None:
    mount = _mount(tmp_path)
    (mount / "ca.crt").unlink()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("AEGIS_SERVICEACCOUNT_DIR", str(mount))
    with pytest.raises(k8s_client.ClientConfigError, match=r"ca\.crt"):
        k8s_client.load_configuration()


def test_no_pod_and_no_kubeconfig_says_what_was_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_pod: None
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(k8s_client.ClientConfigError, match="not in a pod"):
        k8s_client.load_configuration()
