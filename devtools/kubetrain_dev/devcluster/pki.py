"""Certificates, keys and kubeconfigs for the local control plane.

The same small PKI envtest makes: one ECDSA P-256 CA, a serving certificate for
the apiserver, an admin client certificate in ``system:masters``, and a
service-account signing key. The scheduler, the controller manager and KWOK
authenticate with the admin kubeconfig: on a throw-away loopback cluster a
per-component identity would only add files, not protect anything.

One extra non-admin user authenticates with a static token
(``--token-auth-file``) so RBAC tests can act as someone who is *not* a
cluster admin.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Long enough for a `make cluster` left running for a while, short enough to be obviously throw-away.
VALIDITY = dt.timedelta(days=365)
# Tolerate small clock differences between writing the cert and the apiserver checking it.
BACKDATE = dt.timedelta(hours=1)

ADMIN_USER = "kubetrain-admin"
TEST_USER = "kubetrain-developer"
TEST_USER_GROUP = "kubetrain:developers"

# The names in-cluster clients use for the apiserver, besides loopback.
SERVICE_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class Pki:
    """Paths of the files :func:`generate` wrote; the flags the components need."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def admin_cert(self) -> Path:
        return self.dir / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.dir / "admin.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    @property
    def token_file(self) -> Path:
        return self.dir / "tokens.csv"

    def test_user_token(self) -> str:
        return self.token_file.read_text().split(",", 1)[0]


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_private(path: Path, data: bytes) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.write_bytes(data)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
    )


def _make_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = _name("kubetrain-devcluster-ca")
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, key_encipherment=False, content_commitment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )


def _make_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    builder = (
        _builder(subject, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _serving_sans(service_ip: str) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVICE_DNS_NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", service_ip)]
    return sans


def generate(directory: Path, service_ip: str) -> Pki:
    """Write a fresh CA, apiserver serving cert, admin cert, SA key and token file into ``directory``.

    ``service_ip`` is the first address of the service CIDR: in-cluster clients
    reach the apiserver through the ``kubernetes`` Service at that address.
    """
    pki = Pki(Path(directory))
    pki.dir.mkdir(parents=True, exist_ok=True)

    ca_cert, ca_key = _make_ca()
    pki.ca_cert.write_bytes(_cert_pem(ca_cert))
    _write_private(pki.ca_key, _key_pem(ca_key))

    serving, serving_key = _make_leaf(
        ca_cert, ca_key, _name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, _serving_sans(service_ip)
    )
    pki.serving_cert.write_bytes(_cert_pem(serving))
    _write_private(pki.serving_key, _key_pem(serving_key))

    admin, admin_key = _make_leaf(
        ca_cert, ca_key, _name(ADMIN_USER, "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH
    )
    pki.admin_cert.write_bytes(_cert_pem(admin))
    _write_private(pki.admin_key, _key_pem(admin_key))

    sa_key = _new_key()
    _write_private(pki.sa_key, _key_pem(sa_key))
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    # Format: token,user,uid,"group1,group2". Deliberately no system:masters.
    _write_private(pki.token_file, f'{secrets.token_hex(24)},{TEST_USER},{TEST_USER},"{TEST_USER_GROUP}"\n'.encode())
    return pki


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig(
    server: str,
    ca_cert: Path,
    *,
    user: str,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    token: str | None = None,
    cluster_name: str = "kubetrain-dev",
) -> dict:
    """A kubeconfig with every credential embedded, so the file can be copied anywhere."""
    credentials: dict[str, str] = {}
    if client_cert and client_key:
        credentials["client-certificate-data"] = _b64(client_cert)
        credentials["client-key-data"] = _b64(client_key)
    if token:
        credentials["token"] = token
    if not credentials:
        raise ValueError("a kubeconfig needs a client certificate or a token")
    context = f"{user}@{cluster_name}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": cluster_name, "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)}}
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": context, "context": {"cluster": cluster_name, "user": user}}],
        "current-context": context,
    }


def write_kubeconfig(path: Path, config: dict) -> Path:
    """Write ``config`` readable by the owner only (it holds credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    _write_private(tmp, yaml.safe_dump(config, sort_keys=False).encode())
    tmp.replace(path)  # atomic: a reader never sees half a kubeconfig
    return path


def write_admin_kubeconfig(pki: Pki, server: str, path: Path) -> Path:
    return write_kubeconfig(
        path, kubeconfig(server, pki.ca_cert, user=ADMIN_USER, client_cert=pki.admin_cert, client_key=pki.admin_key)
    )


def _load_ca(pki: Pki):
    return (x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()),
            serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None))


def write_client_kubeconfig(pki: Pki, server: str, path: Path, user: str, groups: tuple[str, ...] = ("system:masters",)) -> Path:
    """A kubeconfig for a new client-certificate identity (CN=user, O=groups), signed by the cluster's CA.

    Benchmarks give each operator its own user so the apiserver's audit log
    attributes every request to the client that made it.
    """
    ca_cert, ca_key = _load_ca(pki)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user),
                         *[x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]])
    cert, key = _make_leaf(ca_cert, ca_key, subject, ExtendedKeyUsageOID.CLIENT_AUTH)
    cert_path, key_path = pki.dir / f"user-{user}.crt", pki.dir / f"user-{user}.key"
    cert_path.write_bytes(_cert_pem(cert))
    _write_private(key_path, _key_pem(key))
    return write_kubeconfig(path, kubeconfig(server, pki.ca_cert, user=user, client_cert=cert_path, client_key=key_path))


def write_test_user_kubeconfig(pki: Pki, server: str, path: Path) -> Path:
    return write_kubeconfig(path, kubeconfig(server, pki.ca_cert, user=TEST_USER, token=pki.test_user_token()))


def write_serving_cert(pki: Pki, cert_path: Path, key_path: Path, name: str, ips: tuple[str, ...]) -> None:
    """A serving certificate for ``name`` at ``ips``, signed by the cluster's CA (the real node's kubelet)."""
    ca_cert, ca_key = _load_ca(pki)
    sans = [x509.DNSName(name), *[x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]]
    cert, key = _make_leaf(ca_cert, ca_key, _name(name), ExtendedKeyUsageOID.SERVER_AUTH, sans)
    cert_path.write_bytes(_cert_pem(cert))
    _write_private(key_path, _key_pem(key))
