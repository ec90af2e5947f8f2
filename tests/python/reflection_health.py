"""Lists a gRPC server's services with the standard Python reflection client (grpcio-reflection's
v1alpha `ProtoReflectionDescriptorDatabase`, as older grpcurl, Postman and Evans use) and checks
each one with the standard health client (grpcio-health-checking). Prints one JSON object:
{"services": [...], "health": {service: status}, "methods": {service: [method, ...]}}.

Usage: reflection_health.py HOST:PORT
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    target = sys.argv[1]
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        methods = {}
        for name in services:
            service = pool.FindServiceByName(name)
            methods[name] = [m.name for m in service.methods]
        health = health_pb2_grpc.HealthStub(channel)
        statuses = {}
        for name in [""] + [s for s in services if s.startswith("unbind.")]:
            answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            statuses[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    print(json.dumps({"services": services, "health": statuses, "methods": methods}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
