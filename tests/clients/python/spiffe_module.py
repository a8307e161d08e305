"""A workload using py-spiffe (the SPIFFE project's Python library, on
grpc-core through grpcio) against SPIFFE_ENDPOINT_SOCKET, unchanged.

Fetches its X.509-SVID and bundles, a JWT-SVID, the JWT bundles; has
py-spiffe itself check the JWT-SVID against those bundles, and asks the
server to validate it (for its audience, and for another one, which must be
refused). Prints one JSON object for the test to check with openssl.
"""

import json
import os
import sys

import grpc
from cryptography.hazmat.primitives import serialization
from spiffe import JwtSvid, WorkloadApiClient

AUDIENCE = "backend"


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def main():
    socket = os.environ["SPIFFE_ENDPOINT_SOCKET"]
    with WorkloadApiClient(socket, default_timeout=20) as client:
        svid = client.fetch_x509_svid()
        domain = svid.spiffe_id.trust_domain
        bundle = client.fetch_x509_bundles().get_bundle_for_trust_domain(domain)
        jwt = client.fetch_jwt_svid(audience={AUDIENCE})
        jwt_bundle = client.fetch_jwt_bundles().get_bundle_for_trust_domain(domain)
        checked = JwtSvid.parse_and_validate(jwt.token, jwt_bundle, {AUDIENCE})
        validated = client.validate_jwt_svid(jwt.token, AUDIENCE)
        try:
            client.validate_jwt_svid(jwt.token, "someone-else")
            other_audience = "accepted"
        except Exception as e:
            other_audience = str(e)
    key = svid.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    print(
        json.dumps(
            {
                "grpcio": grpc.__version__,
                "spiffe_id": str(svid.spiffe_id),
                "chain": "".join(pem(c) for c in svid.cert_chain),
                "key": key,
                "bundle": "".join(pem(c) for c in bundle.x509_authorities),
                "jwt": jwt.token,
                "jwt_subject": str(checked.spiffe_id),
                "jwt_keys": sorted(jwt_bundle.jwt_authorities.keys()),
                "validated_subject": str(validated.spiffe_id),
                "other_audience": other_audience,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
