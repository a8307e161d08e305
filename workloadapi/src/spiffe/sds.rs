//! Envoy's Secret Discovery Service (SDS v3) on the SPIFFE socket, as
//! SPIRE's agent serves it: the caller's X.509-SVID as a `tls_certificate`
//! secret and the trust bundle as a `validation_context` secret, pushed
//! again on every rotation. Resource names: `default` (the caller's SVID),
//! its SPIFFE ID (the same SVID under that name), `ROOTCA` (its trust
//! domain's bundle), `spiffe://<trust domain>` (the same bundle under that
//! name), `spiffe://<federated trust domain>` (its bundle); none asked for:
//! the SVID and every bundle under their SPIFFE names.
//! The caller's module is its uid's, as on the Workload API; Envoy sends no
//! security header, so none is asked for.
//!
//! The xDS protocol: each DiscoveryResponse carries a version and a nonce;
//! Envoy ACKs with both, or NACKs with `error_detail` (logged; nothing is
//! sent again until something changes). A request whose nonce is not the
//! last one sent is stale and ignored. Delta xDS is Unimplemented, as the
//! stream form is what Envoy uses for SDS unless told otherwise.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::grpc::{join, status};
use super::proto::envoy::config::core::v3::{data_source, DataSource};
use super::proto::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};
use super::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use super::proto::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use super::x509::{certificates_pem, Bundle, Federated, Svid};
use super::Spiffe;

/// The type URL of every resource here.
pub(super) const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// How long FetchSecrets waits for a first SVID.
const FIRST_SVID: Duration = Duration::from_secs(10);

type State = ((Option<Arc<Svid>>, Bundle), Federated);

/// What a stream's requests and pushes need to know.
struct Names {
    spiffe_id: String,
    trust_domain: String,
}

impl Names {
    /// The secrets for `asked` (all, when empty); InvalidArgument naming
    /// any name this caller has no secret for.
    fn secrets(
        &self,
        asked: &[String],
        svid: &Svid,
        bundle: &[u8],
        federated: &Federated,
    ) -> Result<Vec<Secret>, Status> {
        let mut all = vec![self.spiffe_id.clone(), self.trust_domain.clone()];
        all.extend(federated.keys().cloned());
        let asked = if asked.is_empty() { &all[..] } else { asked };
        let mut out = Vec::new();
        let mut unknown = Vec::new();
        for name in asked {
            if name == "default" || *name == self.spiffe_id {
                out.push(tls_certificate(name, svid)?);
            } else if name == "ROOTCA" || *name == self.trust_domain {
                out.push(validation_context(name, bundle)?);
            } else if let Some(foreign) = federated.get(name) {
                out.push(validation_context(name, foreign)?);
            } else {
                unknown.push(name.as_str());
            }
        }
        if !unknown.is_empty() {
            return Err(Status::invalid_argument(format!(
                "workload is not authorized for the requested identities {unknown:?} (it has default, ROOTCA, {}, {})",
                self.spiffe_id, self.trust_domain
            )));
        }
        Ok(out)
    }
}

fn tls_certificate(name: &str, svid: &Svid) -> Result<Secret, Status> {
    let key = zeroize::Zeroizing::new(pem::encode(&pem::Pem::new(
        "PRIVATE KEY",
        svid.key.to_vec(),
    )));
    Ok(Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(pem_chain(&svid.chain)?.into_bytes())),
            private_key: Some(inline(key.as_bytes().to_vec())),
        })),
    })
}

fn validation_context(name: &str, bundle: &[u8]) -> Result<Secret, Status> {
    Ok(Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(inline(pem_chain(bundle)?.into_bytes())),
            },
        )),
    })
}

fn inline(bytes: Vec<u8>) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes)),
    }
}

/// DER certificates one after another, as PEM.
fn pem_chain(der: &[u8]) -> Result<String, Status> {
    certificates_pem(der).map_err(|e| {
        tracing::error!(error = %e, "an SVID or bundle is not certificates");
        Status::internal("an SVID or bundle holds something not a certificate")
    })
}

/// A DiscoveryResponse of `secrets` at `version`, with a fresh nonce.
fn response(secrets: Vec<Secret>, version: u64) -> Result<DiscoveryResponse, Status> {
    let mut nonce = [0u8; 8];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| Status::internal("no randomness"))?;
    Ok(DiscoveryResponse {
        version_info: version.to_string(),
        resources: secrets
            .into_iter()
            .map(|s| prost_types::Any {
                type_url: SECRET_TYPE.to_owned(),
                value: s.encode_to_vec(),
            })
            .collect(),
        canary: false,
        type_url: SECRET_TYPE.to_owned(),
        nonce: hex_of(&nonce),
    })
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_type(req: &DiscoveryRequest) -> Result<(), Status> {
    if req.type_url.is_empty() || req.type_url == SECRET_TYPE {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "this service serves {SECRET_TYPE}, not {}",
            req.type_url.escape_default()
        )))
    }
}

impl Spiffe {
    /// The caller's names and its SVID and bundle, as they change.
    async fn sds_state<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(String, Names, tokio::sync::watch::Receiver<State>), Status> {
        let module = self.caller_module(request)?;
        let spiffe_id = self.spiffe_id_of(&module).await?;
        let svid = self.x509.subscribe(&module).await.map_err(status)?;
        let bundle = self.x509.bundle().await.map_err(status)?;
        let names = Names {
            spiffe_id,
            trust_domain: self.x509.trust_domain_id(),
        };
        let federated = self.x509.federated().await;
        Ok((module, names, join(join(svid, bundle), federated)))
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for Spiffe {
    type DeltaSecretsStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;
    type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "delta xDS is not served for secrets: use StreamSecrets (Envoy's default for SDS)",
        ))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (module, names, mut state) = self.sds_state(&request).await?;
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            // Names asked for (None until the first request), the version
            // and nonce last sent.
            let mut asked: Option<Vec<String>> = None;
            let mut version = 0u64;
            let mut last_nonce = String::new();
            loop {
                tokio::select! {
                    req = requests.message() => {
                        let Ok(Some(req)) = req else { return };
                        if let Err(s) = check_type(&req) {
                            let _ = tx.send(Err(s)).await;
                            return;
                        }
                        // Stale: a response was sent since. A nonce on a stream
                        // that has been sent nothing (one kept over a
                        // reconnect) is no answer to anything: a subscription.
                        if !req.response_nonce.is_empty()
                            && !last_nonce.is_empty()
                            && req.response_nonce != last_nonce
                        {
                            continue;
                        }
                        if let Some(nack) = &req.error_detail {
                            tracing::warn!(module, version = %req.version_info, error = %nack.message.escape_default(), "Envoy rejected the secrets sent (NACK)");
                            continue;
                        }
                        if !last_nonce.is_empty()
                            && req.response_nonce == last_nonce
                            && asked.as_deref().is_some_and(|a| same_names(a, &req.resource_names))
                        {
                            continue; // an ACK: the same names, in any order
                        }
                        asked = Some(req.resource_names);
                    }
                    changed = state.changed() => {
                        if changed.is_err() { return; }
                        if asked.is_none() { continue; }
                    }
                    () = tx.closed() => return,
                }
                let ((Some(svid), bundle), federated) = state.borrow_and_update().clone() else {
                    continue; // no SVID yet: sent once it is issued
                };
                let Some(names_asked) = &asked else { continue };
                let sent = names
                    .secrets(names_asked, &svid, &bundle, &federated)
                    .and_then(|secrets| {
                        version += 1;
                        response(secrets, version)
                    });
                match sent {
                    Ok(r) => {
                        last_nonce = r.nonce.clone();
                        if tx.send(Ok(r)).await.is_err() {
                            return;
                        }
                    }
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        check_type(request.get_ref())?;
        let (_, names, mut state) = self.sds_state(&request).await?;
        let current = tokio::time::timeout(FIRST_SVID, state.wait_for(|s| s.0 .0.is_some()))
            .await
            .map_err(|_| Status::unavailable("no SVID yet; ask again"))?
            .map_err(|_| Status::unavailable("the SVID source stopped"))?
            .clone();
        let ((Some(svid), bundle), federated) = current else {
            return Err(Status::unavailable("no SVID yet; ask again"));
        };
        let secrets = names.secrets(
            &request.get_ref().resource_names,
            &svid,
            &bundle,
            &federated,
        )?;
        Ok(Response::new(response(secrets, 1)?))
    }
}

/// Whether two subscriptions name the same resources (xDS sets: order and
/// repeats carry no meaning).
fn same_names(a: &[String], b: &[String]) -> bool {
    use std::collections::BTreeSet;
    a.iter().collect::<BTreeSet<&String>>() == b.iter().collect::<BTreeSet<&String>>()
}
