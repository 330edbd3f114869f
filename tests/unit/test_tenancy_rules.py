"""Tenancy: what a namespaced object may make the operator reach (aegis.reach,
aegis.reconcilers.tenancy). Pure validation: no test here resolves a real name or sends a
byte off 127.0.0.1; metadata addresses are only ever parsed, and names go through an
injected resolver."""

from __future__ import annotations

import copy
import http.server
import ipaddress
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aegis.api import KINDS
from aegis.api.backuppolicy import BackupPolicySpec
from aegis.api.failoverplan import FailoverPlanSpec, HttpCheck, JobStep, ScaleStep, Transition
from aegis.k8s.workloads import NamespaceNotAllowed, PlanJobs, Workloads
from aegis.probes.http import check_http, guarded_opener
from aegis.reach import EndpointRefused, EndpointRule, literal_address
from aegis.reconcilers import tenancy
from aegis.settings import Settings
from aegis.steps.base import StepContext
from aegis.steps.scale import run_scale
from aegis.steps.webhook import send_json

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STRICT = EndpointRule()
LOOPBACK = EndpointRule(allow_loopback=True)
NO_PRIVATE = EndpointRule(allow_private=False)


def never_resolve(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} must not be resolved")


def fake_resolver(table: dict[str, list[str]]) -> Any:
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return table[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


# ------------------------------------------------------------------ the address rule


ALWAYS_REFUSED = [
    "169.254.169.254",  # AWS/GCP/Azure metadata
    "169.254.170.2",  # ECS credentials
    "fd00:ec2::254",  # AWS IMDS IPv6 (inside the private fc00::/7)
    "100.100.100.200",  # Alibaba metadata (inside 100.64/10)
    "168.63.129.16",  # Azure WireServer (a public address)
    "169.254.1.1",  # link-local
    "fe80::1",  # IPv6 link-local
    "0.0.0.0",
    "::",
    "224.0.0.1",
    "ff02::1",
    "240.0.0.1",
    "255.255.255.255",
    "::ffff:169.254.169.254",  # IPv4-mapped
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
]


@pytest.mark.parametrize("address", ALWAYS_REFUSED)
def test_link_local_metadata_unspecified_and_multicast_are_refused_whatever_the_settings(
    address: str,
) -> None:
    wide_open = EndpointRule(allow_loopback=True, allow_private=True)
    problem = wide_open.address_problem(ipaddress.ip_address(address))
    assert problem is not None and "never allowed" in problem


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1"])
def test_loopback_is_refused_by_default_and_allowed_by_the_setting(address: str) -> None:
    ip = ipaddress.ip_address(address)
    problem = STRICT.address_problem(ip)
    assert problem and "AEGIS_ALLOW_LOOPBACK_ENDPOINTS=true" in problem
    assert "endpoints.allowLoopback" in problem
    assert LOOPBACK.address_problem(ip) is None


@pytest.mark.parametrize(
    "address", ["10.96.0.12", "172.16.4.2", "192.168.1.10", "100.64.3.4", "fd12:3456::1"]
)
def test_private_ranges_are_allowed_by_default_and_closed_by_the_setting(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert STRICT.address_problem(ip) is None
    problem = NO_PRIVATE.address_problem(ip)
    assert problem and "AEGIS_ALLOW_PRIVATE_ENDPOINTS=false" in problem


@pytest.mark.parametrize("address", ["52.95.110.1", "2600:1f18::1"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert NO_PRIVATE.address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "host", ["2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "169.254.43518", "[fd00:ec2::254]"]
)
def test_every_literal_form_of_the_metadata_address_is_read_as_an_address(host: str) -> None:
    assert literal_address(host) is not None
    problem = LOOPBACK.host_problem(host)
    assert problem and "never allowed" in problem


@pytest.mark.parametrize(
    "host", ["metadata.google.internal", "METADATA.GOOGLE.INTERNAL.", "metadata", "instance-data"]
)
def test_metadata_names_are_refused_without_resolving(host: str) -> None:
    problem = LOOPBACK.host_problem(host)
    assert problem and "metadata" in problem


def test_localhost_names_follow_the_loopback_setting() -> None:
    assert STRICT.host_problem("localhost")
    assert STRICT.host_problem("api.localhost")
    assert LOOPBACK.host_problem("localhost") is None


def test_host_names_are_left_to_connect_time() -> None:
    assert STRICT.host_problem("minio.storage.svc.cluster.local") is None
    assert STRICT.host_problem("s3.eu-central-1.amazonaws.com") is None


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fd00:ec2::254]/latest/api/token",
        "http://user:pw@169.254.169.254:80/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://100.100.100.200/latest/meta-data/",
    ],
)
def test_urls_naming_metadata_services_are_refused_naming_the_field(url: str) -> None:
    with pytest.raises(EndpointRefused, match=r"^spec\.storage\.endpoint: "):
        LOOPBACK.check_url("spec.storage.endpoint", url)


def test_a_name_resolving_to_a_metadata_address_is_refused_before_connecting() -> None:
    resolver = fake_resolver({"rebind.example": ["10.0.0.5", "169.254.169.254"]})
    with pytest.raises(EndpointRefused, match=r"resolves to 169\.254\.169\.254"):
        STRICT.resolve_checked("rebind.example", 443, resolver)


def test_a_name_resolving_to_allowed_addresses_gives_exactly_those() -> None:
    resolver = fake_resolver({"minio.storage.svc": ["10.96.4.7"]})
    assert STRICT.resolve_checked("minio.storage.svc", 9000, resolver) == ["10.96.4.7"]
    assert STRICT.resolve_checked("10.96.4.8", 9000, never_resolve) == ["10.96.4.8"]


def test_s3_style_resolved_url_check_uses_the_default_port() -> None:
    resolver = fake_resolver({"s3.internal": ["127.0.0.1"]})
    with pytest.raises(EndpointRefused, match="loopback"):
        STRICT.check_resolved_url("S3 endpoint", "https://s3.internal", resolver)
    LOOPBACK.check_resolved_url("S3 endpoint", "https://s3.internal", resolver)


# ------------------------------------------------- connections go to the checked address


@pytest.fixture
def local_http() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(204)
            self.send_header("X-Host", self.headers.get("Host", ""))
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_the_guarded_opener_connects_to_the_address_it_checked(local_http: int) -> None:
    resolver = fake_resolver({"svc.test": ["127.0.0.1"]})
    opener = guarded_opener(LOOPBACK, resolver=resolver)
    with opener.open(f"http://svc.test:{local_http}/healthz", timeout=5) as response:
        assert response.status == 204
        assert response.headers["X-Host"] == f"svc.test:{local_http}"
    assert resolver.calls == ["svc.test"]


def test_the_guarded_opener_refuses_a_name_that_resolves_to_metadata(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[Any] = []
    monkeypatch.setattr(socket, "create_connection", lambda *args, **_: opened.append(args))
    resolver = fake_resolver({"rebind.test": ["169.254.169.254"]})
    opener = guarded_opener(LOOPBACK, resolver=resolver)
    with pytest.raises(EndpointRefused, match="cloud metadata"):
        opener.open("http://rebind.test/latest/meta-data/", timeout=1)
    assert opened == []
    assert resolver.calls == ["rebind.test"]


def test_an_http_check_on_a_metadata_address_fails_with_the_reason_and_sends_nothing() -> None:
    spec = HttpCheck(url="http://169.254.169.254/latest/meta-data/")
    result = check_http("imds", spec, None, 1.0, LOOPBACK)
    assert not result.ok
    assert "cloud metadata" in result.message
    assert result.latency_ms < 100


def test_an_http_check_on_loopback_is_refused_by_the_default_rule(local_http: int) -> None:
    result = check_http("self", HttpCheck(url=f"http://127.0.0.1:{local_http}/"), None, 1.0)
    assert not result.ok and "loopback" in result.message
    allowed = check_http("self", HttpCheck(url=f"http://127.0.0.1:{local_http}/",
                                           expectStatus=[204]), None, 1.0, LOOPBACK)
    assert allowed.ok, allowed.message


def test_a_webhook_to_a_metadata_name_is_refused_before_sending() -> None:
    with pytest.raises(EndpointRefused, match=r"webhook\.url"):
        send_json("http://metadata.google.internal/", "POST", {}, {}, 1.0, LOOPBACK)


# ------------------------------------------------------------------ settings


def test_settings_read_the_reach_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings.from_env()
    assert defaults.reachable_namespaces == ()
    assert defaults.allowed_job_images == ()
    assert defaults.allowed_service_accounts == ()
    assert defaults.endpoints == EndpointRule(allow_loopback=False, allow_private=True)
    monkeypatch.setenv("AEGIS_REACHABLE_NAMESPACES", "ops, web")
    monkeypatch.setenv("AEGIS_ALLOWED_JOB_IMAGES", "registry.example.com/tools/*")
    monkeypatch.setenv("AEGIS_ALLOWED_SERVICE_ACCOUNTS", "backup-irsa")
    monkeypatch.setenv("AEGIS_ALLOW_LOOPBACK_ENDPOINTS", "true")
    monkeypatch.setenv("AEGIS_ALLOW_PRIVATE_ENDPOINTS", "false")
    settings = Settings.from_env()
    assert settings.reachable_namespaces == ("ops", "web")
    assert settings.allowed_job_images == ("registry.example.com/tools/*",)
    assert settings.allowed_service_accounts == ("backup-irsa",)
    assert settings.endpoints == EndpointRule(allow_loopback=True, allow_private=False)
    monkeypatch.setenv("AEGIS_ALLOW_PRIVATE_ENDPOINTS", "maybe")
    with pytest.raises(ValueError, match="AEGIS_ALLOW_PRIVATE_ENDPOINTS"):
        Settings.from_env()


# ------------------------------------------------------------------ specs


def example(kind: str) -> dict[str, Any]:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind:
                return copy.deepcopy(doc)
    raise LookupError(kind)


def plan(**changes: Any) -> FailoverPlanSpec:
    spec = example("FailoverPlan")["spec"]
    spec.update(changes)
    return FailoverPlanSpec.model_validate(spec)


def test_every_example_is_accepted_with_the_default_settings() -> None:
    seen = 0
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            kind = next((k for k in KINDS if doc and k.kind == doc.get("kind")), None)
            if kind is None:
                continue
            spec = kind.spec.model_validate(doc["spec"])
            assert tenancy.refusal(spec, doc["metadata"]["namespace"], Settings()) is None, path
            seen += 1
    assert seen >= 5


def test_a_scale_step_in_another_namespace_is_refused_naming_the_field_and_the_setting() -> None:
    spec = plan()
    steps = [s.to_api() for s in spec.steps]
    steps[1]["scale"]["namespace"] = "kube-system"
    refused = tenancy.refusal(plan(steps=steps), "shop", Settings())
    assert refused is not None
    assert refused.reason == "NamespaceNotAllowed"
    assert refused.field == "spec.steps[1].scale.namespace"
    assert refused.message.startswith("spec.steps[1].scale.namespace: ")
    assert "AEGIS_REACHABLE_NAMESPACES" in refused.message
    assert "failover.reachableNamespaces" in refused.message
    assert tenancy.refusal(plan(steps=steps), "shop",
                           Settings(reachable_namespaces=("kube-system",))) is None
    assert tenancy.refusal(plan(steps=steps), "shop", Settings(reachable_namespaces=("*",))) is None
    steps[1]["scale"]["namespace"] = "shop"
    assert tenancy.refusal(plan(steps=steps), "shop", Settings()) is None


def test_a_failback_scale_and_a_workload_check_elsewhere_are_refused() -> None:
    spec = plan().to_api()
    spec["failbackSteps"][2]["scale"]["namespace"] = "payments"
    refused = tenancy.refusal(FailoverPlanSpec.model_validate(spec), "shop", Settings())
    assert refused is not None and refused.field == "spec.failbackSteps[2].scale.namespace"
    spec = plan().to_api()
    spec["primary"]["checks"][2]["workload"]["namespace"] = "kube-system"
    refused = tenancy.refusal(FailoverPlanSpec.model_validate(spec), "shop", Settings())
    assert refused is not None
    assert refused.field == "spec.primary.checks[2].workload.namespace"
    assert refused.reason == "NamespaceNotAllowed"


def job_step(pod: dict[str, Any]) -> dict[str, Any]:
    return {"name": "custom", "job": {"template": {"template": {"spec": pod}}}}


def test_job_steps_run_only_allowed_images_and_service_accounts() -> None:
    steps = [s.to_api() for s in plan().steps]
    pod = {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1.36"}]}
    spec = plan(steps=[*steps, job_step(pod)])
    refused = tenancy.refusal(spec, "shop", Settings())
    assert refused is not None and refused.reason == "ImageNotAllowed"
    assert refused.field == "spec.steps[4].job.template.template.spec.containers[0].image"
    assert "AEGIS_ALLOWED_JOB_IMAGES" in refused.message and "jobs.allowedImages" in refused.message
    allowed = Settings(allowed_job_images=("busybox:*",))
    assert tenancy.refusal(spec, "shop", allowed) is None

    pod_as = {**pod, "serviceAccountName": "cluster-admin-sa"}
    refused = tenancy.refusal(plan(steps=[*steps, job_step(pod_as)]), "shop", allowed)
    assert refused is not None and refused.reason == "ServiceAccountNotAllowed"
    assert "AEGIS_ALLOWED_SERVICE_ACCOUNTS" in refused.message
    both = Settings(
        allowed_job_images=("busybox:*",), allowed_service_accounts=("cluster-admin-sa",)
    )
    assert tenancy.refusal(plan(steps=[*steps, job_step(pod_as)]), "shop", both) is None

    init = {**pod, "initContainers": [{"name": "i", "image": "evil/miner"}]}
    refused = tenancy.refusal(plan(steps=[*steps, job_step(init)]), "shop", allowed)
    assert refused is not None
    assert refused.field.endswith("initContainers[0].image")


def test_the_agent_image_runs_without_any_setting() -> None:
    settings = Settings()
    pod = {"containers": [{"name": "c", "image": settings.agent_image}]}
    steps = [s.to_api() for s in plan().steps]
    assert tenancy.refusal(plan(steps=[*steps, job_step(pod)]), "shop", settings) is None


def policy(**changes: Any) -> BackupPolicySpec:
    spec = example("BackupPolicy")["spec"]
    spec.update(changes)
    return BackupPolicySpec.model_validate(spec)


def test_job_options_image_and_service_account_need_the_settings() -> None:
    settings = Settings()
    refused = tenancy.refusal(policy(job={"image": "attacker/agent:1"}), "shop", settings)
    assert refused is not None and refused.field == "spec.job.image"
    assert refused.reason == "ImageNotAllowed"
    assert tenancy.refusal(policy(job={"image": settings.agent_image}), "shop", settings) is None
    refused = tenancy.refusal(policy(job={"serviceAccountName": "backup-irsa"}), "shop", settings)
    assert refused is not None and refused.field == "spec.job.serviceAccountName"
    assert tenancy.refusal(
        policy(job={"serviceAccountName": "backup-irsa"}), "shop",
        Settings(allowed_service_accounts=("backup-irsa",)),
    ) is None
    assert tenancy.refusal(policy(job={"serviceAccountName": "default"}), "shop", settings) is None


def test_endpoints_of_every_kind_are_checked_naming_the_field() -> None:
    storage = {**example("BackupPolicy")["spec"]["storage"],
               "endpoint": "http://169.254.169.254"}
    refused = tenancy.refusal(policy(storage=storage), "shop", Settings())
    assert refused is not None and refused.reason == "EndpointNotAllowed"
    assert refused.field == "spec.storage.endpoint"
    copies = [{"bucket": "replica", "endpoint": "http://[fe80::1]:9000"}]
    refused = tenancy.refusal(policy(copies=copies), "shop", Settings())
    assert refused is not None and refused.field == "spec.copies[0].endpoint"
    encryption = {"kmsKeys": [{"keyId": "alias/aegis"},
                              {"keyId": "alias/b", "endpoint": "http://169.254.169.254/"}]}
    refused = tenancy.refusal(policy(encryption=encryption), "shop", Settings())
    assert refused is not None and refused.field == "spec.encryption.kmsKeys[1].endpoint"

    spec = plan().to_api()
    spec["primary"]["checks"][1]["http"]["url"] = "http://metadata.google.internal/"
    refused = tenancy.refusal(FailoverPlanSpec.model_validate(spec), "shop", Settings())
    assert refused is not None and refused.field == "spec.primary.checks[1].http.url"
    spec = plan().to_api()
    spec["steps"][3]["webhook"]["url"] = "http://127.0.0.1:8081/healthz"
    refused = tenancy.refusal(FailoverPlanSpec.model_validate(spec), "shop", Settings())
    assert refused is not None and refused.field == "spec.steps[3].webhook.url"
    assert "AEGIS_ALLOW_LOOPBACK_ENDPOINTS" in refused.message
    assert tenancy.refusal(FailoverPlanSpec.model_validate(spec), "shop",
                           Settings(allow_loopback_endpoints=True)) is None
    spec = plan().to_api()
    spec["steps"][2]["route53"]["endpoint"] = "http://0xa9fea9fe/"
    refused = tenancy.refusal(FailoverPlanSpec.model_validate(spec), "shop", Settings())
    assert refused is not None and refused.field == "spec.steps[2].route53.endpoint"


# ------------------------------------------------- second line: the ports refuse too


def test_the_workload_port_refuses_another_namespace_before_any_api_call() -> None:
    workloads = Workloads("shop")
    with pytest.raises(NamespaceNotAllowed, match="kube-system/coredns"):
        workloads.read_replicas("Deployment", "kube-system", "coredns")
    with pytest.raises(NamespaceNotAllowed):
        workloads.set_replicas("Deployment", "kube-system", "coredns", 0)


def test_a_scale_step_through_the_bound_port_fails_without_touching_the_target() -> None:
    step = ScaleStep(kind="Deployment", name="coredns", namespace="kube-system", replicas=0)
    ctx = StepContext(plan="orders", namespace="shop", step="scale",
                      transition=Transition(kind="Failover", id="t"), from_site="a",
                      to_site="b", deadline=float("inf"))
    result = run_scale(step, ctx, Workloads("shop"))
    assert not result.ok and "outside the plan's namespace shop" in result.message
    assert result.outputs == {}


def test_the_job_port_admits_the_template_before_creating() -> None:
    owner = {"metadata": {"name": "orders", "namespace": "shop", "uid": "u"},
             "apiVersion": "dr.aegis.dev/v1alpha1", "kind": "FailoverPlan"}
    settings = Settings()
    jobs = PlanJobs(owner, "t", admit=lambda spec: tenancy.job_template(
        "job.template", spec, settings))
    template = JobStep(template={"template": {"spec": {
        "containers": [{"name": "c", "image": "busybox"}]}}}).template
    with pytest.raises(tenancy.Refused, match="busybox"):
        jobs.ensure_job("shop", "orders-custom", template)
    with pytest.raises(NamespaceNotAllowed):
        jobs.ensure_job("kube-system", "orders-custom", template)


def test_the_operator_checks_s3_endpoints_before_boto3_or_a_job_gets_them() -> None:
    from aegis.api.common import S3Location
    from aegis.reconcilers.recoverypoint import PointBlocked, admit_endpoint

    for endpoint in ("http://169.254.169.254", "http://localhost:9000", "http://[::1]:9000"):
        with pytest.raises(PointBlocked) as blocked:
            admit_endpoint(S3Location(bucket="backups", endpoint=endpoint), Settings())
        assert blocked.value.reason == "EndpointNotAllowed"
        assert "S3 endpoint" in blocked.value.message
    admit_endpoint(S3Location(bucket="backups", endpoint="http://10.96.0.10:9000"), Settings())
    admit_endpoint(S3Location(bucket="backups"), Settings())  # AWS: nothing to check


def test_a_tcp_check_on_a_metadata_address_fails_without_connecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aegis.api.failoverplan import TcpCheck
    from aegis.probes.tcp import check_tcp

    opened: list[Any] = []
    monkeypatch.setattr(socket, "create_connection", lambda *args, **_: opened.append(args))
    result = check_tcp("imds", TcpCheck(host="169.254.169.254", port=80), 1.0, LOOPBACK)
    assert not result.ok and "cloud metadata" in result.message
    assert opened == []


def test_catalog_sync_imports_only_manifests_of_its_own_namespace_and_policy() -> None:
    import datetime as dt

    from aegis.agent.manifest import EncryptionRecord, Manifest, SourceRecord

    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    manifest = Manifest(
        namespace="shop", policy="orders", recovery_point="orders-1",
        location="s3://bkt/p/shop/orders/orders-1/payload",
        manifest="p/shop/orders/orders-1/manifest.json", payload_format="redis-rdb",
        start_time=t0, completion_time=t0, source_time=t0,
        source=SourceRecord(kind="Redis"), size_bytes=1, stored_bytes=1, sha256="ab" * 32,
        compression="Zstd",
        encryption=EncryptionRecord(algorithm="AES-256-GCM-STREAM", key_id="k1",
                                    key_wrap="AES-KW", wrapped_key="AAAA", chunk_size=1 << 20,
                                    nonce_prefix="01020304050607"),
    )
    assert tenancy.manifest_belongs(manifest, "shop", "orders")
    assert not tenancy.manifest_belongs(manifest, "intruder", "orders")
    assert not tenancy.manifest_belongs(manifest, "shop", "other")


def test_https_goes_to_the_checked_address_and_verifies_the_certificate_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    import ssl
    import subprocess

    from aegis.probes import http as http_probe

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=svc.test",
         "-addext", "subjectAltName=DNS:svc.test"],
        check=True, capture_output=True,
    )

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"https://svc.test:{server.server_address[1]}/"
        resolver = fake_resolver({"svc.test": ["127.0.0.1"]})
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            guarded_opener(LOOPBACK, resolver=resolver).open(url, timeout=5)
        # The test certificate as the trust store OpenSSL loads by default.
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        http_probe._tls_context.cache_clear()
        with guarded_opener(LOOPBACK, resolver=resolver).open(url, timeout=5) as response:
            assert response.status == 200  # the name matched the certificate, not the IP
    finally:
        http_probe._tls_context.cache_clear()
        server.shutdown()
        server.server_close()


def test_a_route53_endpoint_is_checked_before_the_client_is_built() -> None:
    from aegis.api.failoverplan import Route53Step
    from aegis.reconcilers.failoverplan import guarded_route53

    built: list[Any] = []
    factory = guarded_route53(lambda step, creds: built.append(step) or "client", STRICT)
    step = Route53Step(hostedZoneId="Z1", recordName="db.example.com", type="A",
                       values=["10.0.0.2"], endpoint="http://[fd00:ec2::254]/")
    with pytest.raises(EndpointRefused, match=r"route53\.endpoint"):
        factory(step, None)
    assert built == []
    assert factory(step.model_copy(update={"endpoint": None}), None) == "client"


def test_the_switchover_and_redis_steps_are_held_to_the_endpoint_rules() -> None:
    spec = plan().to_api()
    spec["failbackSteps"][0]["postgresSwitchover"]["primary"]["host"] = "169.254.169.254"
    refused = tenancy.refusal(FailoverPlanSpec.model_validate(spec), "shop", Settings())
    assert refused is not None
    assert refused.field == "spec.failbackSteps[0].postgresSwitchover.primary.host"
    spec = plan().to_api()
    spec["steps"].append({"name": "cache", "redisPromote": {
        "target": {"host": "cache-replica"}, "fencePrimary": {"host": "169.254.169.254"}}})
    refused = tenancy.refusal(FailoverPlanSpec.model_validate(spec), "shop", Settings())
    assert refused is not None and refused.field.endswith("redisPromote.fencePrimary.host")
