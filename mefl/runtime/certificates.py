"""Self-signed TLS certificates and SuperNode key pairs, in the formats Flower 1.42 reads.

* ``ca.crt`` / ``ca.key``: a private certificate authority (ECDSA P-384, PEM). Give ``ca.crt`` to
  every SuperNode (``--root-certificates``) and to the laptop's connection entry
  (``root-certificates``); keep ``ca.key`` on the machine that signs certificates.
* ``server.crt`` / ``server.key``: the SuperLink's certificate, signed by the CA, valid for
  ``localhost``, ``127.0.0.1`` and ``::1`` plus any ``--san`` names or addresses (``flower-superlink
  --ssl-ca-certfile ca.crt --ssl-certfile server.crt --ssl-keyfile server.key``). The SuperLink's
  own ServerApp processes reach it on 127.0.0.1, so keep the loopback names even for a public host.
* ``nodes/<name>`` / ``nodes/<name>.pub``: one ECDSA P-384 key pair per SuperNode in OpenSSH format
  (``flower-supernode --auth-supernode-private-key nodes/<name>``; the SuperLink's operator
  registers ``nodes/<name>.pub`` with ``flwr supernode register nodes/<name>.pub <connection>``).

These are test certificates for a local deployment or a trial on a private network. For real
devices use certificates from your organisation's CA (or e.g. Let's Encrypt for a public host
name): the SuperLink needs the CA bundle, its certificate and its key; SuperNodes and the
laptop need only the CA certificate that signed the SuperLink's certificate.

    mefl certs --out certs --nodes 3 --san 192.168.1.10 --san link.example.org
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mefl_app.files import write_atomically

DEFAULT_SANS = ("localhost", "127.0.0.1", "::1")
VALID_DAYS = 365


@dataclass(frozen=True)
class ServerCertificates:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKeys:
    name: str
    private_key: Path
    public_key: Path


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, lambda tmp: tmp.write_bytes(data), mode=0o600 if private else None)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_server_certificates(out: Path, sans: Iterable[str] = (), days: int = VALID_DAYS) -> ServerCertificates:
    """A fresh CA and a server certificate it signs for the loopback names plus ``sans``."""
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mefl"), x509.NameAttribute(NameOID.COMMON_NAME, "mefl test CA")]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    names = list(dict.fromkeys([*DEFAULT_SANS, *sans]))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mefl"),
                    x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    return ServerCertificates(
        ca_cert=_write(out / "ca.crt", ca_cert.public_bytes(pem)),
        ca_key=_write(out / "ca.key", _key_pem(ca_key), private=True),
        server_cert=_write(out / "server.crt", server_cert.public_bytes(pem)),
        server_key=_write(out / "server.key", _key_pem(server_key), private=True),
    )


def make_node_keys(out: Path, name: str) -> NodeKeys:
    """One SuperNode's ECDSA P-384 key pair in OpenSSH format, as ``flower-supernode
    --auth-supernode-private-key`` and ``flwr supernode register`` read them."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return NodeKeys(
        name=name,
        private_key=_write(out / name, private, private=True),
        public_key=_write(out / f"{name}.pub", public + f" mefl-{name}\n".encode()),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mefl certs``'s options."""
    parser.add_argument("--out", type=Path, required=True, help="folder for ca.crt, server.crt/.key and nodes/")
    parser.add_argument("--nodes", type=int, default=0, help="number of SuperNode key pairs (nodes/node0, ...)")
    parser.add_argument(
        "--san",
        action="append",
        default=[],
        help="extra host name or IP address of the SuperLink (repeatable); loopback is always in",
    )
    parser.add_argument("--days", type=int, default=VALID_DAYS)


def main(args: argparse.Namespace) -> int:
    """Write a self-signed CA, a SuperLink certificate and SuperNode key pairs (test use)."""
    certs = make_server_certificates(args.out, args.san, args.days)
    print(f"CA certificate      {certs.ca_cert}  (give to every SuperNode and to flwr's connection entry)")
    print(f"server certificate  {certs.server_cert}, key {certs.server_key}  (SuperLink only)")
    for i in range(args.nodes):
        keys = make_node_keys(args.out / "nodes", f"node{i}")
        print(f"SuperNode key pair  {keys.private_key} (device only), {keys.public_key} (register it)")
    print("These are self-signed TEST certificates; use your organisation's CA for real devices.")
    return 0
