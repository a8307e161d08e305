//! DPS TPM attestation against swtpm: the service wraps a fresh key to the
//! enrolled endorsement key (on its own, second swtpm); keyd activates and
//! imports it inside the device's TPM; tokens are then signed by the TPM.
//! A device with another TPM cannot complete the same registration.

mod common;

use common::{provisioned, settled, Daemons};
use edgeid_common::authz::Admins;
use edgeid_identityd::api::{AuthType, ProvisioningState};
use edgeid_identityd::config::{AttestationConfig, DpsConfig, ProvisioningConfig};
use edgeid_testkit::cloud::{CloudService, Enrollment};
use edgeid_testkit::{IdentitydFixture, Swtpm};

fn tpm_provisioning(cloud: &CloudService) -> ProvisioningConfig {
    ProvisioningConfig::Dps(DpsConfig {
        global_endpoint: cloud.endpoint.clone(),
        id_scope: cloud.id_scope.clone(),
        attestation: AttestationConfig::Tpm {
            registration_id: "tpm-device".into(),
        },
        payload_file: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpm_attestation_provisions_and_only_the_enrolled_tpm_can() {
    let device_tpm = Swtpm::start();
    let daemons = Daemons::with_tpm(&device_tpm).await;
    let cloud = CloudService::start(None).await;
    cloud.set_tpm_peer(Swtpm::start());
    let keys = daemons.keyd.client().tpm_attestation_keys().await.unwrap();
    cloud.enroll(
        "tpm-device",
        Enrollment::Tpm(keys.endorsement_key.public.0.clone()),
    );

    let config =
        IdentitydFixture::config_in(daemons.path(), tpm_provisioning(&cloud), Some(&cloud));
    let identityd = IdentitydFixture::configured(config, Admins::root_and_self()).await;
    let client = identityd.client();
    provisioned(&client).await;
    let device = client.device().await.unwrap();
    assert_eq!(device.device_id, "tpm-device");
    assert_eq!(device.auth.auth_type, AuthType::Sas);
    // The device token is an HMAC computed in the TPM with the service's key.
    let token = client.device_token(None).await.unwrap();
    cloud
        .authenticate_device("tpm-device", &token.token)
        .unwrap();
    client.create_module("m1").await.unwrap();
    client.create_module("m2").await.unwrap();
    let token = client.module_token("m1", None).await.unwrap();
    cloud
        .authenticate_module("tpm-device", "m1", &token.token)
        .unwrap();
    assert_eq!(cloud.registrations(), 1);

    // Another device, another TPM, the same registration id.
    let other_tpm = Swtpm::start();
    let other = Daemons::with_tpm(&other_tpm).await;
    let config = IdentitydFixture::config_in(other.path(), tpm_provisioning(&cloud), Some(&cloud));
    let impostor = IdentitydFixture::configured(config, Admins::root_and_self()).await;
    let status = settled(&impostor.client()).await;
    assert_eq!(status.state, ProvisioningState::Failed);
    let why = status.last_error.unwrap();
    assert!(why.contains("TPM"), "{why}");
    assert_eq!(cloud.registrations(), 1, "the impostor never registered");
}
