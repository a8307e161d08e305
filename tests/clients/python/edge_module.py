"""A module as IoT Edge runs it: the unchanged azure-iot-device SDK (v2),
configured by nothing but the IOTEDGE_* environment.

create_from_edge_environment() reads the trust bundle and signs a SAS token
through the workload API (its IoTEdgeHsm), at the api-version in
IOTEDGE_APIVERSION. The token is renewed once, so the SDK signs twice.
Prints, as one JSON object, what the SDK got, for the test to check with a
second party: the token with the hub's key, the bundle with openssl. On
failure prints the SDK's error and exits 1.
"""

import json
import sys

import importlib.metadata
from azure.iot.device import IoTHubModuleClient


def main():
    try:
        client = IoTHubModuleClient.create_from_edge_environment()
    except Exception as e:  # the SDK's own error, as a module's log would show it
        cause = e.__cause__
        print(json.dumps({"error": str(e), "cause": repr(cause)}))
        return 1
    config = client._mqtt_pipeline._nucleus.pipeline_configuration
    first = str(config.sastoken)
    config.sastoken.refresh()
    print(
        json.dumps(
            {
                "sdk": importlib.metadata.version("azure-iot-device"),
                "sas": first,
                "renewed": str(config.sastoken),
                "ca": config.server_verification_cert,
                "gateway": config.gateway_hostname,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
