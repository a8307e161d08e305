"""What a gRPC probe or tool asks the SPIFFE socket, with grpcio's own
clients, unchanged: grpc.health.v1 (grpcio-health-checking's stubs) Check
for the server, the Workload API and an unknown service, and the first
message of Watch; server reflection (grpcio-reflection's
ProtoReflectionDescriptorDatabase, as grpcurl-like tools use it) listing the
services and resolving SpiffeWorkloadAPI's methods; and the WIT-SVID RPCs,
which the specification says answer Unimplemented where the profile is not
served. No security header but on the Workload API's RPCs. Prints one JSON
object.
"""

import json
import os

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main():
    target = os.environ["SPIFFE_ENDPOINT_SOCKET"]
    out = {"grpcio": grpc.__version__}
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ["", "SpiffeWorkloadAPI", "envoy.service.secret.v3.SecretDiscoveryService", "edgeid.attestation.v1.ModuleAttestation"]:
            answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            out[f"check:{name}"] = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
        try:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
            out["check:unknown"] = "answered"
        except grpc.RpcError as e:
            out["check:unknown"] = e.code().name
        watch = health.Watch(health_pb2.HealthCheckRequest(service="SpiffeWorkloadAPI"), timeout=10)
        first = next(watch)
        out["watch"] = health_pb2.HealthCheckResponse.ServingStatus.Name(first.status)
        watch.cancel()

        db = ProtoReflectionDescriptorDatabase(channel)
        out["services"] = sorted(db.get_services())
        pool = DescriptorPool(db)
        service = pool.FindServiceByName("SpiffeWorkloadAPI")
        out["methods"] = sorted(m.name for m in service.methods)
        svid = pool.FindMessageTypeByName("X509SVID")
        out["x509svid_fields"] = {f.name: f.number for f in svid.fields}
        attestation = pool.FindServiceByName("edgeid.attestation.v1.ModuleAttestation")
        out["attestation_methods"] = [m.name for m in attestation.methods]

        header = (("workload.spiffe.io", "true"),)
        for method in ["FetchWITSVID", "FetchWITBundles"]:
            call = channel.unary_stream(
                f"/SpiffeWorkloadAPI/{method}",
                request_serializer=lambda _: b"",
                response_deserializer=lambda b: b,
            )
            try:
                list(call(None, metadata=header, timeout=10))
                out[method] = "answered"
            except grpc.RpcError as e:
                out[method] = {"code": e.code().name, "details": e.details()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
