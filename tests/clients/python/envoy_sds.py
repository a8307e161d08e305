"""What Envoy asks an SDS server, sent with the grpc project's own Envoy
API bindings (xds-protos from PyPI) on grpcio, unchanged: StreamSecrets with
Envoy's DiscoveryRequest (node, resource names `default` and `ROOTCA`, the
Secret type URL), ACKs with version and nonce, a rotation pushed, a NACK,
a change of names; FetchSecrets for known and unknown names; DeltaSecrets;
a wrong type URL. Prints one JSON object.
"""

import json
import os
import queue

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2

SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
NODE = base_pb2.Node(id="envoy-1", cluster="edge", user_agent_name="envoy")


def secrets(response):
    out = {}
    for any_ in response.resources:
        assert any_.type_url == SECRET, any_.type_url
        s = secret_pb2.Secret()
        any_.Unpack(s)
        if s.HasField("tls_certificate"):
            out[s.name] = {
                "chain": s.tls_certificate.certificate_chain.inline_bytes.decode(),
                "key": s.tls_certificate.private_key.inline_bytes.decode(),
            }
        else:
            out[s.name] = {"trusted_ca": s.validation_context.trusted_ca.inline_bytes.decode()}
    return out


def code(call):
    try:
        call()
        return "OK"
    except grpc.RpcError as e:
        return e.code().name + ": " + (e.details() or "")


def main():
    spiffe_id = os.environ["EXPECTED_SPIFFE_ID"]
    out = {}
    with grpc.insecure_channel(os.environ["SDS_SOCKET"]) as channel:
        sds = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        requests = queue.Queue()
        requests.put(discovery_pb2.DiscoveryRequest(
            node=NODE, resource_names=["default", "ROOTCA"], type_url=SECRET))
        stream = sds.StreamSecrets(iter(requests.get, None), timeout=30)
        first = next(stream)
        out["first"] = {"version": first.version_info, "secrets": secrets(first)}
        # ACK; the next message is the rotation.
        requests.put(discovery_pb2.DiscoveryRequest(
            node=NODE, version_info=first.version_info, response_nonce=first.nonce,
            resource_names=["default", "ROOTCA"], type_url=SECRET))
        second = next(stream)
        out["second"] = {"version": second.version_info, "secrets": secrets(second)}
        # NACK it, then ask for the SVID by its SPIFFE ID.
        requests.put(discovery_pb2.DiscoveryRequest(
            node=NODE, version_info=first.version_info, response_nonce=second.nonce,
            resource_names=["default", "ROOTCA"], type_url=SECRET,
            error_detail=status_pb2.Status(code=3, message="test NACK")))
        requests.put(discovery_pb2.DiscoveryRequest(
            node=NODE, version_info=second.version_info, response_nonce=second.nonce,
            resource_names=[spiffe_id], type_url=SECRET))
        third = next(stream)
        out["third"] = {"version": third.version_info, "names": sorted(secrets(third))}
        requests.put(None)
        stream.cancel()

        fetched = sds.FetchSecrets(discovery_pb2.DiscoveryRequest(
            node=NODE, resource_names=["default"], type_url=SECRET), timeout=10)
        out["fetch_names"] = sorted(secrets(fetched))
        out["fetch_all"] = sorted(secrets(sds.FetchSecrets(
            discovery_pb2.DiscoveryRequest(node=NODE, type_url=SECRET), timeout=10)))
        out["fetch_unknown"] = code(lambda: sds.FetchSecrets(discovery_pb2.DiscoveryRequest(
            node=NODE, resource_names=["spiffe://other.test/x"], type_url=SECRET), timeout=10))
        out["fetch_wrong_type"] = code(lambda: sds.FetchSecrets(discovery_pb2.DiscoveryRequest(
            node=NODE, resource_names=["default"],
            type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster"), timeout=10))
        out["delta"] = code(lambda: list(sds.DeltaSecrets(
            iter([discovery_pb2.DeltaDiscoveryRequest(node=NODE, type_url=SECRET)]), timeout=10)))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
