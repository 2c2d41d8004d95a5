#!/usr/bin/env python3
"""An independent device side of Palyra pairing in Python, written from the v1 contract (not
from our Rust code): `cryptography` for X25519 / Ed25519 / HKDF-SHA256, pyOpenSSL to read the
gateway's chain and pin its CA by SubjectPublicKeyInfo hash, grpcio (message classes from server
reflection) for the NodeService calls, aioquic for palyra-quic-v1 with the issued certificate.

It reproduces the contract's test vector, then enrolls against a running palyrad: mints a QR
invite through the admin API, pairs, has the operator approve through the admin API, receives a
certificate for its own key, and calls node.health over QUIC with mutual TLS. Prints one row per
case; exit status 1 if any case fails."""

import argparse
import asyncio
import hashlib
import ipaddress
import json
import os
import secrets
import socket
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from OpenSSL import SSL

SERVICE = "palyra.node.v1.NodeService"
VERSION = 1
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def raw(key):
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def transcript_mac(shared, challenge, session_id, device_id, client_kind):
    info = (b"palyra-mtls-transcript-v1" + session_id.encode() + VERSION.to_bytes(4, "little")
            + device_id.encode() + client_kind.encode())
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=challenge, info=info).derive(shared)


def signature_payload(session_id, challenge, gateway_public, device_id, client_kind, proof):
    return (b"palyra-pairing-v1" + VERSION.to_bytes(4, "little") + session_id.encode() + challenge
            + gateway_public + device_id.encode() + client_kind.encode() + proof.encode())


def hello(signing, x25519, session_id, challenge, gateway_public, device_id, client_kind, proof):
    shared = x25519.exchange(X25519PublicKey.from_public_bytes(gateway_public))
    if shared == bytes(32):
        raise ValueError("non-contributory X25519 result")
    payload = signature_payload(session_id, challenge, gateway_public, device_id, client_kind, proof)
    return {
        "signing_public": raw(signing.public_key()),
        "x25519_public": raw(x25519.public_key()),
        "signature": signing.sign(payload),
        "mac": transcript_mac(shared, challenge, session_id, device_id, client_kind),
    }


def new_ulid():
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return "".join(CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def spki_sha256(cert):
    return hashlib.sha256(cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def case_vector():
    """Reference section 4.4, byte for byte."""
    signing = Ed25519PrivateKey.from_private_bytes(bytes([0x11] * 32))
    x25519 = X25519PrivateKey.from_private_bytes(bytes([0x22] * 32))
    gateway = X25519PrivateKey.from_private_bytes(bytes([0x33] * 32))
    gateway_public = raw(gateway.public_key())
    assert gateway_public.hex() == "7b0d47d93427f8311160781c7c733fd89f88970aef490d8aa0ee19a4cb8a1b14"
    h = hello(signing, x25519, "01J9" + "Z" * 22, bytes([0x44] * 32), gateway_public,
              "01ARZ3NDEKTSV4RRFFQ69G5FAV", "node", "123456")
    assert h["signing_public"].hex() == "d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737"
    assert h["x25519_public"].hex() == "0faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20"
    assert h["mac"].hex() == "a7b0a59a376ea7bdae908aaae790f109a21aeac93ac7024dd194c73a4acd38b2"
    assert hashlib.sha256(h["mac"]).hexdigest() == "a5086fe83bb3f27a96862eb95126646f652945a9d024cf47f93e5a7dd074d16a"
    assert h["signature"].hex() == ("e79f07ed43673df24b1ede9fa7e3c6bd403fd4790865f33d85952bab600fcfeb"
                                    "966cf233d5ee9eda6add0fd062542ba3556586b2e47f6d93713546d8d14ab80a")
    return "transcript MAC, hash and signature match the contract"


def admin(http, token, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{http}{path}", data=data, method=method,
                                 headers={"authorization": f"Bearer {token}",
                                          "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def parse_invite(invite):
    assert invite.startswith("palyra://pair?"), invite
    params = dict(urllib.parse.parse_qsl(invite[len("palyra://pair?"):], strict_parsing=True))
    assert set(params) == {"addr", "ca", "code"}, params
    assert params["ca"].startswith("sha256:"), params
    return params["addr"], params["ca"][len("sha256:"):], params["code"]


def pinned_ca(addr, pin):
    """Reads the server's chain (unverified), finds the CA whose key hash is pinned, and checks
    that it issued the server certificate. Returns the CA certificate."""
    host, port = addr.rsplit(":", 1)
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
    ctx.set_alpn_protos([b"h2"])
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setblocking(True)
    conn = SSL.Connection(ctx, sock)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        conn.set_tlsext_host_name(host.encode())
    conn.set_connect_state()
    conn.do_handshake()
    chain = [c.to_cryptography() for c in conn.get_peer_cert_chain()]
    conn.shutdown()
    sock.close()
    leaf = chain[0]
    for cert in chain[1:]:
        if secrets.compare_digest(spki_sha256(cert), pin):
            leaf.verify_directly_issued_by(cert)
            return cert
    raise AssertionError("no CA with the pinned key in the gateway's chain")


class Device:
    def __init__(self, addr, ca_pem):
        creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
        self.channel = grpc.secure_channel(addr, creds)
        self.pool = DescriptorPool(ProtoReflectionDescriptorDatabase(self.channel))
        self.signing = Ed25519PrivateKey.generate()
        self.x25519 = X25519PrivateKey.generate()
        self.device_id = new_ulid()

    def method(self, name):
        m = self.pool.FindServiceByName(SERVICE).methods_by_name[name]
        req, resp = GetMessageClass(m.input_type), GetMessageClass(m.output_type)
        call = self.channel.unary_unary(f"/{SERVICE}/{name}", request_serializer=req.SerializeToString,
                                        response_deserializer=resp.FromString)
        return req, call

    def begin(self, code):
        req, call = self.method("BeginPairingSession")
        r = req(v=VERSION, client_kind="node")
        r.method.qr_token = code
        r.replay.nonce = secrets.token_hex(16)
        r.replay.timestamp_unix_ms = int(time.time() * 1000)
        return call(r, timeout=10)

    def complete_request(self, begun, code):
        h = hello(self.signing, self.x25519, begun.session_id, begun.challenge,
                  begun.gateway_ephemeral_public, self.device_id, "node", code)
        req, _ = self.method("CompletePairingSession")
        r = req(v=VERSION, session_id=begun.session_id, client_kind="node", proof=code,
                device_signing_public=h["signing_public"], device_x25519_public=h["x25519_public"],
                challenge_signature=h["signature"], transcript_mac=h["mac"])
        r.device_id.ulid = self.device_id
        return r

    def status(self, session_id):
        req, call = self.method("GetPairingRequestStatus")
        r = req(v=VERSION, session_id=session_id)
        r.device_id.ulid = self.device_id
        return call(r, timeout=10)


def expect_code(fn, code):
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() == code, (e.code(), e.details())
        return f"{e.code().name}: {e.details()}"
    raise AssertionError("call succeeded")


async def quic_health(addr, ca_pem, cert_pem, key_pem, device_id):
    from aioquic.asyncio import connect
    from aioquic.quic.configuration import QuicConfiguration
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from aioquic_client import frame, parse_frames
    host, port = addr.rsplit(":", 1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, data in (("ca", ca_pem), ("crt", cert_pem), ("key", key_pem)):
            paths[name] = os.path.join(tmp, name + ".pem")
            with open(paths[name], "wb") as f:
                f.write(data)
        config = QuicConfiguration(is_client=True, alpn_protocols=["palyra-quic-v1"], server_name=host)
        config.load_verify_locations(paths["ca"])
        config.load_cert_chain(paths["crt"], paths["key"])
        async with connect(host, int(port), configuration=config) as client:
            reader, writer = await client.create_stream()
            writer.write(frame({"protocol_version": 1, "method": "node.health"}))
            writer.write_eof()
            frames = parse_frames(await asyncio.wait_for(reader.read(), 10))
    f = frames[0]
    assert f["kind"] == "health" and f["ok"] is True, f
    assert f["device_id"] == device_id, f
    return f"node.health ok as {device_id} with mTLS (aioquic)"


def run(args):
    results = []
    state = {}

    def case(name, fn):
        try:
            detail = fn()
            results.append((name, "PASS", detail))
        except Exception as e:  # noqa: BLE001 - every failure becomes a row
            results.append((name, "FAIL", f"{type(e).__name__}: {e}"[:160]))

    case("vector", case_vector)

    def mint():
        answer = admin(args.http, args.token, "POST", "/admin/v1/pairing/codes", {"method": "qr"})
        state["addr"], state["pin"], state["code"] = parse_invite(answer["invite"])
        return f"invite for {state['addr']}"
    case("invite", mint)

    def pin():
        ca = pinned_ca(state["addr"], state["pin"])
        state["ca_pem"] = ca.public_bytes(serialization.Encoding.PEM)
        state["device"] = Device(state["addr"], state["ca_pem"])
        return f"CA {ca.subject.rfc4514_string()} matches sha256:{state['pin'][:16]}..."
    case("pinned_ca", pin)

    def wrong_code():
        d = state["device"]
        wrong = "".join(secrets.choice(CROCKFORD) for _ in range(26))
        return expect_code(lambda: d.begin(wrong), grpc.StatusCode.FAILED_PRECONDITION)
    case("wrong_code", wrong_code)

    def pair():
        d = state["device"]
        begun = d.begin(state["code"])
        assert len(begun.gateway_ephemeral_public) == 32 and len(begun.challenge) == 32, begun
        request = d.complete_request(begun, state["code"])
        _, call = d.method("CompletePairingSession")
        done = call(request, timeout=10)
        assert done.reason == "pending_approval", done
        want = hashlib.sha256(raw(d.signing.public_key())).hexdigest()
        assert done.identity_fingerprint == want, (done.identity_fingerprint, want)
        assert done.transcript_hash == hashlib.sha256(request.transcript_mac).hexdigest(), done
        state["session"], state["complete"] = begun.session_id, request
        return f"request {begun.session_id} pending_approval, fingerprint and transcript hash agree"
    case("begin_complete", pair)

    def replay():
        _, call = state["device"].method("CompletePairingSession")
        return expect_code(lambda: call(state["complete"], timeout=10), grpc.StatusCode.NOT_FOUND)
    case("replayed_complete", replay)

    def approve():
        s = state["device"].status(state["session"])
        assert s.status == "pending_approval" and not s.mtls_client_certificate_pem, s
        answer = admin(args.http, args.token, "POST",
                       f"/admin/v1/pairing/requests/{state['session']}/approve", {})
        assert answer["request"]["state"] == "approved", answer
        return "operator approved through the admin API"
    case("approve", approve)

    def certificate():
        d = state["device"]
        s = d.status(state["session"])
        assert s.status == "completed" and s.paired, s
        assert s.mtls_client_private_key_pem == "", "the gateway sent a private key"
        cert = x509.load_pem_x509_certificate(s.mtls_client_certificate_pem.encode())
        ca = x509.load_pem_x509_certificate(s.gateway_ca_certificate_pem.encode())
        assert spki_sha256(ca) == state["pin"], "delivered CA is not the pinned one"
        cert.verify_directly_issued_by(ca)
        assert isinstance(cert.public_key(), Ed25519PublicKey)
        assert raw(cert.public_key()) == raw(d.signing.public_key()), "certificate key is not ours"
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert any(d.device_id in str(n.value) for n in names), names
        state["cert_pem"] = s.mtls_client_certificate_pem.encode()
        return f"Ed25519 certificate for our own key, device {d.device_id}"
    case("certificate", certificate)

    def again():
        s = state["device"].status(state["session"])
        assert s.status == "completed", s
        assert s.mtls_client_certificate_pem.encode() == state["cert_pem"], "not the same certificate"
        assert not s.mtls_client_private_key_pem, "a private key on the wire"
        return "second poll (first answer lost): completed, the same public certificate"
    case("delivered_again", again)

    def health():
        d = state["device"]
        key_pem = d.signing.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
        return asyncio.run(quic_health(state["addr"], state["ca_pem"], state["cert_pem"], key_pem,
                                       d.device_id))
    case("quic_health", health)

    failed = False
    for name, status, detail in results:
        print(f"{args.label} {name} {status} {detail}")
        failed |= status != "PASS"
    return 1 if failed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--http", required=True, help="palyrad operator address HOST:PORT")
    p.add_argument("--token", required=True, help="admin token")
    p.add_argument("--label", default="python-device")
    sys.exit(run(p.parse_args()))


if __name__ == "__main__":
    main()
