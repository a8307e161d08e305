//! What the SPIFFE socket serves beside the Workload API, as the
//! specification recommends of an endpoint: gRPC health
//! (`grpc.health.v1.Health`: `""`, `SpiffeWorkloadAPI`,
//! `envoy.service.secret.v3.SecretDiscoveryService` and
//! `edgeid.attestation.v1.ModuleAttestation`, SERVING while keyd, certd and
//! identityd answer workloadd (asked every `health_check_secs`), NOT_SERVING otherwise and on shutdown) and
//! server reflection (`grpc.reflection.v1` and `v1alpha`, from the
//! descriptors the build compiled). Neither needs the security header, as
//! probes (grpc_health_probe, Kubernetes' gRPC probes, grpcurl) send none;
//! neither tells a caller more than that the socket serves and what it
//! serves.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::workload::Workload;

/// The build's file descriptor set (`build.rs`).
const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// The services health reports on, by their gRPC names.
const SERVICES: [&str; 4] = [
    "",
    "SpiffeWorkloadAPI",
    "envoy.service.secret.v3.SecretDiscoveryService",
    "edgeid.attestation.v1.ModuleAttestation",
];

/// The gRPC path prefixes these services answer under.
pub(super) const HEALTH_PATH: &str = "/grpc.health.v1.Health/";
pub(super) const REFLECTION_V1_PATH: &str = "/grpc.reflection.v1.ServerReflection/";
pub(super) const REFLECTION_V1ALPHA_PATH: &str = "/grpc.reflection.v1alpha.ServerReflection/";

/// The health service, and its reporter.
pub(super) fn health() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    tonic_health::server::health_reporter()
}

/// The two reflection services.
pub(super) fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    String,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(DESCRIPTORS)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = builder()
        .build_v1()
        .map_err(|e| format!("gRPC reflection: {e}"))?;
    let v1alpha = builder()
        .build_v1alpha()
        .map_err(|e| format!("gRPC reflection: {e}"))?;
    Ok((v1, v1alpha))
}

/// Keeps the health statuses to what `workload` can reach, asking every
/// `every`, until `shutdown`; then NOT_SERVING.
pub(super) async fn report(
    reporter: HealthReporter,
    workload: Arc<Workload>,
    every: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut last = None;
    loop {
        let health = workload.health().await;
        let status = if health.status == "ok" {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            if status == ServingStatus::NotServing {
                tracing::warn!(backends = ?health.backends, "SPIFFE health: NOT_SERVING");
            }
            set(&reporter, status).await;
            last = Some(status);
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = &mut shutdown => break,
        }
    }
    set(&reporter, ServingStatus::NotServing).await;
}

async fn set(reporter: &HealthReporter, status: ServingStatus) {
    for service in SERVICES {
        reporter.set_service_status(service, status).await;
    }
}
