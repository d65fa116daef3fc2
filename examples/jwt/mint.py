#!/usr/bin/env python3
"""Mints a signed JWT with the example's TEST-ONLY keys, using only the Python
standard library and the `openssl` command line tool.

    python3 examples/jwt/mint.py                      # RS256, kid example-rsa, 1 hour
    python3 examples/jwt/mint.py --alg ES256          # ES256, kid example-ec
    python3 examples/jwt/mint.py --sub bob --ttl 60 --claim roles='["admin"]'

Claims: iss and aud match examples/jwt/gateway.yaml, plus sub, iat and exp (now +
--ttl seconds; a negative --ttl mints an expired token). Each `--claim NAME=VALUE` adds
a claim whose VALUE is parsed as JSON when it can be, kept as a string otherwise.
"""

import argparse
import base64
import json
import os
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS = {
    "RS256": ("signing-rsa.pem", "example-rsa", "sha256"),
    "ES256": ("signing-ec.pem", "example-ec", "sha256"),
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def der_ecdsa_to_raw(sig: bytes, size: int) -> bytes:
    """openssl writes ECDSA signatures as DER SEQUENCE{r, s}; JWS wants r || s."""
    assert sig[0] == 0x30
    pos = 2 if sig[1] < 0x80 else 2 + (sig[1] & 0x7F)
    out = b""
    for _ in range(2):
        assert sig[pos] == 0x02
        length = sig[pos + 1]
        value = sig[pos + 2 : pos + 2 + length].lstrip(b"\0")
        out += value.rjust(size, b"\0")
        pos += 2 + length
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--alg", choices=sorted(KEYS), default="RS256")
    p.add_argument("--key", help="private key PEM (default: the example key for --alg)")
    p.add_argument("--kid", help="kid header (default: the example key's kid)")
    p.add_argument("--iss", default="https://issuer.example.com")
    p.add_argument("--aud", default="extproc-gateway")
    p.add_argument("--sub", default="alice")
    p.add_argument("--ttl", type=int, default=3600, help="seconds until exp")
    p.add_argument("--claim", action="append", default=[], metavar="NAME=VALUE")
    a = p.parse_args()

    key_file, kid, digest = KEYS[a.alg]
    key_file = a.key or os.path.join(HERE, key_file)
    now = int(time.time())
    claims = {"iss": a.iss, "aud": a.aud, "sub": a.sub, "iat": now, "exp": now + a.ttl}
    for c in a.claim:
        name, _, value = c.partition("=")
        try:
            claims[name] = json.loads(value)
        except ValueError:
            claims[name] = value

    header = {"alg": a.alg, "typ": "JWT", "kid": a.kid or kid}
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    sig = subprocess.run(
        ["openssl", "dgst", "-" + digest, "-sign", key_file],
        input=signing_input.encode(),
        capture_output=True,
        check=True,
    ).stdout
    if a.alg.startswith("ES"):
        sig = der_ecdsa_to_raw(sig, 32)
    print(signing_input + "." + b64url(sig))


if __name__ == "__main__":
    main()
