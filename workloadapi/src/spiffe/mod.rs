//! The SPIFFE Workload API, on its own socket beside the IoT Edge API
//! (ARCHITECTURE.md section 7): X.509-SVIDs pushed again on every rotation,
//! JWT-SVIDs signed in keyd, the X.509 and JWT bundles, and JWT-SVID
//! validation, for any SPIFFE client (go-spiffe, spiffe-helper, Envoy, ...).
//!
//! - [`proto`]: the specification's messages, server and client (generated);
//!   `client` (feature `client`): connecting to the socket.
//! - [`id`]: SPIFFE IDs; [`x509`]: X.509-SVIDs and the bundle; [`jwt`]:
//!   JWT-SVIDs, their keys and JWK set; [`grpc`]: the service;
//!   [`attestation`]: edgeid's module quotes, a service of its own beside it;
//!   `health`: gRPC health and server reflection; `sds`: Envoy's Secret
//!   Discovery Service.

pub mod attestation;
#[cfg(feature = "client")]
pub mod client;
pub mod grpc;
mod health;
pub mod id;
pub mod jwt;
pub mod proto;
mod sds;
pub mod x509;

use std::future::Future;
use std::sync::Arc;

use edgeid_common::listener::Listener;
use edgeid_common::server::Limits;
use edgeid_keyd::KeydClient;

use crate::config::SpiffeConfig;
use crate::error::Error;
use crate::workload::Workload;
use proto::attestation::module_attestation_server::ModuleAttestationServer;
use proto::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use proto::spiffe_workload_api_server::SpiffeWorkloadApiServer;

/// Largest request message accepted (the requests are a few hundred bytes;
/// a JWT-SVID to validate is the largest).
const MAX_REQUEST: usize = 64 * 1024;

/// The gRPC path prefix of Envoy's Secret Discovery Service (`sds`).
const SDS_PATH: &str = "/envoy.service.secret.v3.SecretDiscoveryService/";

/// The gRPC path prefix of edgeid's module attestation service.
const ATTESTATION_PATH: &str = "/edgeid.attestation.v1.ModuleAttestation/";

/// The SPIFFE side of workloadd.
pub struct Spiffe {
    workload: Arc<Workload>,
    x509: Arc<x509::X509Authority>,
    jwt: Arc<jwt::JwtAuthority>,
    /// SPIFFE IDs by module, and when they were read (a module map's size:
    /// only mapped modules get here).
    ids: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
    /// How often gRPC health asks the daemons behind workloadd.
    health_every: std::time::Duration,
    /// `[spiffe] hints`: module → hint.
    hints: std::collections::BTreeMap<String, String>,
}

impl Spiffe {
    /// The SPIFFE Workload API of `workload`, as `config` has it.
    pub fn new(workload: Arc<Workload>, keyd: KeydClient, config: &SpiffeConfig) -> Self {
        Self {
            x509: Arc::new(x509::X509Authority::new(workload.clone(), config)),
            jwt: Arc::new(jwt::JwtAuthority::new(
                keyd,
                &config.trust_domain,
                config.jwt_svid_lifetime_secs,
                config.jwt_key_rotation_secs,
            )),
            workload,
            ids: std::sync::Mutex::new(std::collections::HashMap::new()),
            health_every: std::time::Duration::from_secs(config.health_check_secs),
            hints: config.hints.clone(),
        }
    }

    /// Serves on `listener` until `shutdown` resolves, renewing SVIDs and
    /// rotating JWT keys meanwhile.
    pub async fn serve(
        self,
        listener: Listener,
        limits: Limits,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        tokio::spawn(self.x509.clone().run(stopped()));
        tokio::spawn(rotate_jwt_keys(self.jwt.clone(), stopped()));
        let (reporter, health) = health::health();
        tokio::spawn(health::report(
            reporter,
            self.workload.clone(),
            self.health_every,
            stopped(),
        ));
        let (reflection, reflection_alpha) = health::reflection().map_err(Error::Setup)?;
        let me = Arc::new(self);
        let grpc =
            SpiffeWorkloadApiServer::from_arc(me.clone()).max_decoding_message_size(MAX_REQUEST);
        let attestation =
            ModuleAttestationServer::from_arc(me.clone()).max_decoding_message_size(MAX_REQUEST);
        let sds = SecretDiscoveryServiceServer::from_arc(me).max_decoding_message_size(MAX_REQUEST);
        let health = health.max_decoding_message_size(MAX_REQUEST);
        let reflection = reflection.max_decoding_message_size(MAX_REQUEST);
        let reflection_alpha = reflection_alpha.max_decoding_message_size(MAX_REQUEST);
        let served = edgeid_common::server::serve_h2(listener, limits, shutdown, move |caller| {
            let services = (
                sds.clone(),
                grpc.clone(),
                attestation.clone(),
                health.clone(),
                reflection.clone(),
                reflection_alpha.clone(),
            );
            hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(caller);
                let (
                    mut sds,
                    mut grpc,
                    mut attestation,
                    mut health,
                    mut reflection,
                    mut reflection_alpha,
                ) = services.clone();
                async move {
                    // One socket, several services: the path names the service.
                    let path = req.uri().path();
                    if path.starts_with(SDS_PATH) {
                        tonic::codegen::Service::call(&mut sds, req).await
                    } else if path.starts_with(ATTESTATION_PATH) {
                        tonic::codegen::Service::call(&mut attestation, req).await
                    } else if path.starts_with(health::HEALTH_PATH) {
                        tonic::codegen::Service::call(&mut health, req).await
                    } else if path.starts_with(health::REFLECTION_V1_PATH) {
                        tonic::codegen::Service::call(&mut reflection, req).await
                    } else if path.starts_with(health::REFLECTION_V1ALPHA_PATH) {
                        tonic::codegen::Service::call(&mut reflection_alpha, req).await
                    } else {
                        tonic::codegen::Service::call(&mut grpc, req).await
                    }
                }
            })
        })
        .await;
        let _ = stop_tx.send(true);
        served.map_err(|e| Error::Setup(format!("SPIFFE server failed: {e}")))
    }
}

/// Rotates the JWT signing keys on their schedule; keyd being away delays it.
async fn rotate_jwt_keys(jwt: Arc<jwt::JwtAuthority>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut failures = 0u32;
    loop {
        let wait = match jwt.rotate().await {
            Ok(()) => {
                failures = 0;
                jwt.tick()
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = std::time::Duration::from_secs(1 << failures.min(5));
                tracing::warn!(error = %e, retry_in = ?wait, "cannot rotate the JWT signing keys");
                wait.min(jwt.tick().max(std::time::Duration::from_secs(1)))
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut shutdown => return,
        }
    }
}
