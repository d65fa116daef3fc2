#!/usr/bin/env python3
"""Prints a JWKS document (public keys only) for PEM keys, using only the Python
standard library and the `openssl` command line tool.

    python3 examples/jwt/jwks.py \
        examples/jwt/signing-rsa.pem:example-rsa:RS256 \
        examples/jwt/signing-ec.pem:example-ec:ES256 > examples/jwt/jwks.json

Each argument is `PEM_FILE:KID:ALG`. The PEM file may hold a private or a public key
(RSA, EC P-256 / P-384, or Ed25519); only the public part is ever written.
"""

import base64
import json
import subprocess
import sys


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def der_read(data: bytes, pos: int):
    """One DER element at `pos`: (tag, content, position after it)."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    return tag, data[pos : pos + length], pos + length


def der_children(content: bytes):
    pos = 0
    while pos < len(content):
        tag, value, pos = der_read(content, pos)
        yield tag, value


def spki_der(pem_file: str) -> bytes:
    """The SubjectPublicKeyInfo (DER) of a private or public PEM key."""
    with open(pem_file, "rb") as f:
        text = f.read()
    args = ["openssl", "pkey", "-pubout", "-outform", "DER"]
    if b"PUBLIC KEY" in text and b"PRIVATE KEY" not in text:
        args.append("-pubin")
    return subprocess.run(args, input=text, capture_output=True, check=True).stdout


OIDS = {
    bytes.fromhex("2a864886f70d010101"): "RSA",
    bytes.fromhex("2a8648ce3d0201"): "EC",
    bytes.fromhex("2b6570"): "Ed25519",
}
CURVES = {
    bytes.fromhex("2a8648ce3d030107"): ("P-256", 32),
    bytes.fromhex("2b81040022"): ("P-384", 48),
}


def jwk(pem_file: str, kid: str, alg: str) -> dict:
    _, spki, _ = der_read(spki_der(pem_file), 0)
    (_, algid), (_, bits) = list(der_children(spki))
    params = list(der_children(algid))
    kind = OIDS[params[0][1]]
    key = bits[1:]  # BIT STRING: first byte is the count of unused bits (0)
    if kind == "RSA":
        _, seq, _ = der_read(key, 0)
        (_, n), (_, e) = list(der_children(seq))
        out = {"kty": "RSA", "n": b64url(n.lstrip(b"\0")), "e": b64url(e.lstrip(b"\0"))}
    elif kind == "EC":
        crv, size = CURVES[params[1][1]]
        assert key[0] == 4, "uncompressed EC point expected"
        out = {
            "kty": "EC",
            "crv": crv,
            "x": b64url(key[1 : 1 + size]),
            "y": b64url(key[1 + size :]),
        }
    else:
        out = {"kty": "OKP", "crv": "Ed25519", "x": b64url(key)}
    return {**out, "kid": kid, "alg": alg, "use": "sig"}


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    keys = []
    for arg in sys.argv[1:]:
        pem_file, kid, alg = arg.rsplit(":", 2)
        keys.append(jwk(pem_file, kid, alg))
    print(json.dumps({"keys": keys}, indent=2))


if __name__ == "__main__":
    main()
