"""TLS of the Kubernetes API emulator: a throwaway CA, a serving certificate, client certs.

Why TLS on loopback: kubectl (client-go) never sends a kubeconfig's token or client
certificate to a plain-http server (`clientcmd` reads user credentials only "if we are
secure"), so with plain http every kubectl call would be anonymous. The emulator therefore
serves https with a CA of its own, made at start-up (ECDSA P-256: fast to make and to
handshake), and writes that CA into its kubeconfigs as `certificate-authority-data`.

Client certificates signed by the CA authenticate as kube-apiserver's x509 authenticator
does: the subject's CN is the user, each O a group.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CertificateAuthority:
    """A CA valid for a day (the emulator lives for a test session or a sandbox)."""

    def __init__(self, common_name: str = "aegis-emulator-ca") -> None:
        self._key = _key()
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        self._not_before = now - datetime.timedelta(minutes=5)
        self._not_after = now + datetime.timedelta(days=1)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self._name).issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before).not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def _issue(self, subject: x509.Name, usage: x509.ObjectIdentifier,
               san: list[x509.GeneralName] | None = None) -> KeyPair:
        key = _key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before).not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))

    def serving(self, host: str) -> KeyPair:
        names: list[x509.GeneralName] = [x509.DNSName("localhost"),
                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        try:
            address = ipaddress.ip_address(host)
            if str(address) != "127.0.0.1":
                names.append(x509.IPAddress(address))
        except ValueError:
            names.append(x509.DNSName(host))
        return self._issue(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
                           ExtendedKeyUsageOID.SERVER_AUTH, names)

    def client(self, user: str, groups: tuple[str, ...] = ()) -> KeyPair:
        """A client certificate for `user` in `groups` (CN and O, as kubeadm's admin.conf)."""
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, user))
        return self._issue(x509.Name(attrs), ExtendedKeyUsageOID.CLIENT_AUTH)


@dataclass(frozen=True)
class ServingCertificate:
    """The server's key pair and the CA that signed it (`ca_pem`: what a pod's `ca.crt`
    holds); with a directory, the files written there."""

    ca_pem: bytes
    pair: KeyPair
    directory: Path | None = None


def make_serving_certificate(ca: CertificateAuthority, host: str,
                             directory: Path | None = None) -> ServingCertificate:
    serving = ServingCertificate(ca.cert_pem, ca.serving(host), directory)
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca.crt").write_bytes(ca.cert_pem)
        (directory / "apiserver.crt").write_bytes(serving.pair.cert_pem)
        key = directory / "apiserver.key"
        key.write_bytes(serving.pair.key_pem)
        key.chmod(0o600)
    return serving


def server_context(ca: CertificateAuthority, serving: ServingCertificate) -> ssl.SSLContext:
    """https with optional client certificates verified against our CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory(prefix="aegis-emulator-tls-") as tmp:
        cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert.write_bytes(serving.pair.cert_pem)
        key.write_bytes(serving.pair.key_pem)
        key.chmod(0o600)
        context.load_cert_chain(cert, key)
    context.load_verify_locations(cadata=ca.cert_pem.decode())
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


def identity_from_peercert(peercert: object) -> tuple[str, tuple[str, ...]] | None:
    """(user, groups) of a verified client certificate as `ssl` reports it, or None."""
    if not isinstance(peercert, dict) or not peercert.get("subject"):
        return None
    user, groups = "", []
    for rdn in peercert["subject"]:
        for key, value in rdn:
            if key == "commonName":
                user = value
            elif key == "organizationName":
                groups.append(value)
    return (user, tuple(groups)) if user else None
