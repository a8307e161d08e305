// A module as IoT Edge runs it: the unchanged azure-iot-device Node.js SDK,
// configured by nothing but the IOTEDGE_* environment.
//
// ModuleClient.fromEnvironment(Mqtt) reads the trust bundle through the
// workload API (the SDK's IotEdgeAuthenticationProvider, which always sends
// api-version 2018-06-28). The same provider, as the transport uses it, then
// signs a SAS token. Prints one JSON object for the test to check with a
// second party (the token with the hub's key, the bundle with openssl); on
// failure prints the SDK's error and exits 1.
'use strict';

const { ModuleClient, IotEdgeAuthenticationProvider } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const sdk = require('azure-iot-device/package.json');

function fail(what, err) {
  console.log(JSON.stringify({ error: `${what}: ${err && err.message}` }));
  process.exit(1);
}

ModuleClient.fromEnvironment(Mqtt, (err, client) => {
  if (err) return fail('fromEnvironment', err);
  const provider = new IotEdgeAuthenticationProvider({
    workloadUri: process.env.IOTEDGE_WORKLOADURI,
    deviceId: process.env.IOTEDGE_DEVICEID,
    moduleId: process.env.IOTEDGE_MODULEID,
    iothubHostName: process.env.IOTEDGE_IOTHUBHOSTNAME,
    authScheme: process.env.IOTEDGE_AUTHSCHEME,
    gatewayHostName: process.env.IOTEDGE_GATEWAYHOSTNAME,
    generationId: process.env.IOTEDGE_MODULEGENERATIONID,
  });
  provider.getTrustBundle((err, ca) => {
    if (err) return fail('getTrustBundle', err);
    provider.getDeviceCredentials((err, credentials) => {
      if (err) return fail('getDeviceCredentials', err);
      provider.stop();
      client.close(() => {
        console.log(JSON.stringify({
          sdk: sdk.version,
          sas: credentials.sharedAccessSignature,
          ca,
          client: client.constructor.name,
        }));
        process.exit(0);
      });
    });
  });
});
