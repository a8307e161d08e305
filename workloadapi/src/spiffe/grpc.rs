//! The gRPC service: the security header, the caller's module (by the same
//! mapping as the IoT Edge API), and each RPC as the SPIFFE Workload API
//! specification has it.

use std::collections::HashMap;
use std::sync::Arc;

use edgeid_common::sync::lock;
use edgeid_common::Caller;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::proto::spiffe_workload_api_server::SpiffeWorkloadApi;
use super::proto::*;
use super::Spiffe;
use crate::error::Error;
use crate::workload::Who;

/// The metadata every request must carry (SPIFFE Workload Endpoint, section 4).
const SECURITY_HEADER: &str = "workload.spiffe.io";

type Stream<T> = ReceiverStream<Result<T, Status>>;

/// The gRPC status for an error, as the SPIFFE Workload Endpoint's error
/// codes have it.
pub fn status(e: Error) -> Status {
    match e {
        Error::BadRequest(m) => Status::invalid_argument(m),
        Error::TooLarge(m) => Status::resource_exhausted(m),
        // Not entitled to an identity: not a module, or not one identityd knows.
        Error::Forbidden(m) | Error::NotFound(m) => Status::permission_denied(m),
        Error::Unavailable(m) => Status::unavailable(m),
        Error::Internal(m) | Error::Setup(m) => {
            tracing::error!(error = %m, "SPIFFE request failed");
            Status::internal("internal error; see workloadd's log")
        }
    }
}

impl Spiffe {
    /// The caller's module, after the security header check.
    pub(super) fn module<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let header = request.metadata().get(SECURITY_HEADER);
        if header.and_then(|v| v.to_str().ok()) != Some("true") {
            return Err(Status::invalid_argument(
                "security header missing from request: set metadata 'workload.spiffe.io: true'",
            ));
        }
        self.caller_module(request)
    }

    /// The caller's module, by its uid alone (Envoy's SDS sends no security
    /// header).
    pub(super) fn caller_module<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let caller = request
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::internal("the connection's caller is unknown"))?;
        let who = Who {
            caller,
            bound: None,
        };
        self.workload
            .module_name(&who)
            .map(str::to_owned)
            .map_err(status)
    }

    /// The module's SPIFFE ID, once identityd confirms the module exists;
    /// reused for `identity_cache_secs`, as module identities are.
    pub(super) async fn spiffe_id_of(&self, module: &str) -> Result<String, Status> {
        let ttl = std::time::Duration::from_secs(self.workload.config.identity_cache_secs);
        let cached = lock(&self.ids)
            .get(module)
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(id, _)| id.clone());
        if let Some(id) = cached {
            return Ok(id);
        }
        let identity = self.workload.fetch_identity(module).await.map_err(status)?;
        let id = self
            .x509
            .spiffe_id(&identity.module_id)
            .await
            .map_err(status)?;
        if !ttl.is_zero() {
            lock(&self.ids).insert(module.to_owned(), (id.clone(), std::time::Instant::now()));
        }
        Ok(id)
    }
}

/// Streams `build(value)` now and on each change of `rx`, until the client
/// goes away or the sender is dropped.
fn watch_stream<V, T>(
    mut rx: watch::Receiver<V>,
    build: impl Fn(&V) -> Option<T> + Send + 'static,
) -> Stream<T>
where
    V: Send + Sync + 'static,
    T: Send + 'static,
{
    let (tx, out) = mpsc::channel(2);
    tokio::spawn(async move {
        loop {
            let message = build(&rx.borrow_and_update());
            if let Some(m) = message {
                if tx.send(Ok(m)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
        }
    });
    ReceiverStream::new(out)
}

/// Merges two watches into one that changes when either does.
pub(super) fn join<A, B>(
    mut a: watch::Receiver<A>,
    mut b: watch::Receiver<B>,
) -> watch::Receiver<(A, B)>
where
    A: Clone + Send + Sync + 'static,
    B: Clone + Send + Sync + 'static,
{
    let (tx, rx) = watch::channel((a.borrow_and_update().clone(), b.borrow_and_update().clone()));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = a.changed() => if changed.is_err() { return },
                changed = b.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
            let both = (a.borrow_and_update().clone(), b.borrow_and_update().clone());
            if tx.send(both).is_err() {
                return;
            }
        }
    });
    rx
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Spiffe {
    type FetchX509SVIDStream = Stream<X509svidResponse>;
    type FetchX509BundlesStream = Stream<X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream<JwtBundlesResponse>;
    type FetchWITSVIDStream = Stream<WitsvidResponse>;
    type FetchWITBundlesStream = Stream<WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let module = self.module(&request)?;
        let svid = self.x509.subscribe(&module).await.map_err(status)?;
        let bundle = self.x509.bundle().await.map_err(status)?;
        let federated = self.x509.federated().await;
        let hint = self.hints.get(&module).cloned().unwrap_or_default();
        let stream = watch_stream(
            join(join(svid, bundle), federated),
            move |((svid, bundle), federated)| {
                let svid = svid.as_ref()?;
                Some(X509svidResponse {
                    svids: vec![X509svid {
                        spiffe_id: svid.spiffe_id.clone(),
                        x509_svid: svid.chain.clone(),
                        x509_svid_key: svid.key.to_vec(),
                        bundle: bundle.to_vec(),
                        hint: hint.clone(),
                    }],
                    crl: Vec::new(),
                    federated_bundles: federated
                        .iter()
                        .map(|(td, der)| (td.clone(), der.clone()))
                        .collect(),
                })
            },
        );
        Ok(Response::new(stream))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        self.module(&request)?;
        let bundle = self.x509.bundle().await.map_err(status)?;
        let federated = self.x509.federated().await;
        let td = self.x509.trust_domain_id();
        let stream = watch_stream(join(bundle, federated), move |(bundle, federated)| {
            let mut bundles: HashMap<String, Vec<u8>> = federated
                .iter()
                .map(|(td, der)| (td.clone(), der.clone()))
                .collect();
            bundles.insert(td.clone(), bundle.to_vec());
            Some(X509BundlesResponse {
                crl: Vec::new(),
                bundles,
            })
        });
        Ok(Response::new(stream))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let module = self.module(&request)?;
        let req = request.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience is required"));
        }
        let spiffe_id = self.spiffe_id_of(&module).await?;
        if !req.spiffe_id.is_empty() && req.spiffe_id != spiffe_id {
            tracing::warn!(module, asked = %req.spiffe_id.escape_default(), "refused: a JWT-SVID for another identity");
            return Err(Status::permission_denied(format!(
                "module '{module}' is {spiffe_id}; it may not have a JWT-SVID for another identity"
            )));
        }
        let svid = self
            .jwt
            .svid(&spiffe_id, &req.audience)
            .await
            .map_err(status)?;
        Ok(Response::new(JwtsvidResponse {
            svids: vec![Jwtsvid {
                spiffe_id,
                svid,
                hint: self.hints.get(&module).cloned().unwrap_or_default(),
            }],
        }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.module(&request)?;
        let td = self.x509.trust_domain_id();
        let stream = watch_stream(self.jwt.jwks(), move |set: &Arc<Vec<u8>>| {
            (!set.is_empty()).then(|| JwtBundlesResponse {
                bundles: HashMap::from([(td.clone(), set.to_vec())]),
            })
        });
        Ok(Response::new(stream))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        let module = self.module(&request)?;
        let req = request.into_inner();
        let (spiffe_id, claims) = self.jwt.validate(&req.svid, &req.audience).map_err(|e| {
            tracing::info!(module, error = %e, "a JWT-SVID did not validate");
            status(e)
        })?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id,
            claims: Some(to_struct(claims)),
        }))
    }

    async fn fetch_witsvid(
        &self,
        request: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        self.module(&request)?;
        Err(no_wit_svids())
    }

    async fn fetch_wit_bundles(
        &self,
        request: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        self.module(&request)?;
        Err(no_wit_svids())
    }
}

/// The specification's answer where the WIT-SVID profile is not served.
fn no_wit_svids() -> Status {
    Status::unimplemented(
        "this Workload API endpoint does not serve the WIT-SVID profile: use X.509-SVIDs or JWT-SVIDs",
    )
}

/// JSON claims as a protobuf `Struct`.
fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s),
        J::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}
