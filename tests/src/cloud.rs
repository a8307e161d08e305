//! **Test fixture**: a stand-in for Azure's Device Provisioning Service and
//! IoT Hub, on loopback with TLS from its own test CA, implementing the parts
//! of their public REST APIs that identityd calls, and checking credentials
//! the way the real services do. It shares no code with identityd: tokens are
//! parsed and their HMACs recomputed here (RustCrypto `hmac`, not keyd's
//! aws-lc), TLS client certificates are verified by rustls/webpki against the
//! enrollment's CA, and TPM attestation wraps a fresh key to the *enrolled*
//! endorsement key on a second swtpm ([`crate::tpm_peer`]), so only that TPM
//! can use it. Anything else is refused.
//!
//! DPS: `PUT /{scope}/registrations/{reg}/register`, `GET .../operations/{op}`.
//! Hub: `PUT` / `DELETE /devices/{d}/modules/{m}` (device credential).
//! Checks for tests: [`CloudService::authenticate_module`], [`CloudService::authenticate_device`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::tls_server::{answer, LocalhostTls};
use crate::tpm_peer::{wrap_hmac_key, Wrapping};
use crate::Swtpm;

type HmacSha256 = Hmac<Sha256>;

/// How a registration id may attest.
#[derive(Clone)]
pub enum Enrollment {
    /// An individual symmetric key enrollment.
    SymmetricKey(Vec<u8>),
    /// A TPM enrollment: the endorsement key public (TPM2B_PUBLIC) as enrolled.
    Tpm(Vec<u8>),
    /// An X.509 enrollment: a client certificate from the service's CA with
    /// this registration id as its common name.
    X509,
}

/// A fault the DPS endpoints answer with, for tests of bad services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 200 with a body that is not JSON.
    Garbage,
    /// 503.
    Unavailable,
    /// 401 from the hub for every device credential (a revoked device).
    HubRefusesDevice,
}

#[derive(Clone)]
enum DeviceAuth {
    Sas(Vec<u8>),
    X509,
}

#[derive(Clone, Debug)]
enum ModuleAuth {
    Sas(Vec<u8>),
    Thumbprint(String),
}

#[derive(Default)]
struct State {
    id_scope: String,
    hub: String,
    enrollments: HashMap<String, Enrollment>,
    group_key: Option<Vec<u8>>,
    tpm_pending: HashMap<String, Vec<u8>>,
    operations: HashMap<String, (String, u32)>,
    devices: HashMap<String, DeviceAuth>,
    modules: HashMap<(String, String), ModuleAuth>,
    fault: Option<Fault>,
    requests: Vec<String>,
    registrations: usize,
    /// Each registration's body, as it came.
    registration_bodies: Vec<Value>,
    /// The TLS client certificate (leaf DER) of each request that had one.
    client_certs: Vec<Vec<u8>>,
}

/// The running test service.
pub struct CloudService {
    /// `https://localhost:<port>`: DPS's global endpoint.
    pub endpoint: String,
    /// `localhost:<port>`: the hub it assigns devices to.
    pub hub: String,
    /// The ID scope.
    pub id_scope: String,
    /// The CA of its TLS certificate (identityd's `cloud.trust_anchors`).
    pub tls_ca_pem: String,
    port: u16,
    tls: LocalhostTls,
    state: Arc<Mutex<State>>,
    peer: Arc<Mutex<Option<Swtpm>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for CloudService {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl CloudService {
    /// Starts the service; X.509 attestation and hub TLS auth accept client
    /// certificates that chain to `client_ca_pem`.
    pub async fn start(client_ca_pem: Option<&str>) -> Self {
        let roots: Vec<Vec<u8>> = client_ca_pem
            .map(|p| {
                pem::parse_many(p)
                    .expect("client CA PEM")
                    .into_iter()
                    .map(|b| b.into_contents())
                    .collect()
            })
            .unwrap_or_default();
        let tls = LocalhostTls::new("edgeid test cloud TLS CA", &roots);
        let state = Arc::new(Mutex::new(State {
            id_scope: "0ne00TEST".into(),
            ..State::default()
        }));
        let mut me = Self {
            endpoint: String::new(),
            hub: String::new(),
            id_scope: "0ne00TEST".into(),
            tls_ca_pem: tls.ca_pem.clone(),
            port: 0,
            tls,
            state,
            peer: Arc::new(Mutex::new(None)),
            task: None,
        };
        me.listen("127.0.0.1:0".parse().expect("addr")).await;
        me.endpoint = format!("https://localhost:{}", me.port);
        me.hub = format!("localhost:{}", me.port);
        me.state().hub = me.hub.clone();
        me
    }

    async fn listen(&mut self, addr: SocketAddr) {
        let state = self.state.clone();
        let peer = self.peer.clone();
        let (port, task) = self
            .tls
            .serve(addr, move |cert, req| {
                let state = state.clone();
                let peer = peer.clone();
                async move { handle(&state, &peer, cert, req).await }
            })
            .await;
        self.port = port;
        self.task = Some(task);
    }

    /// Stops listening: the network is down.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn resume(&mut self) {
        self.stop();
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().expect("addr");
        for _ in 0..50 {
            if std::net::TcpListener::bind(addr).is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        self.listen(addr).await;
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enrolls a registration id.
    pub fn enroll(&self, registration_id: &str, enrollment: Enrollment) {
        self.state()
            .enrollments
            .insert(registration_id.into(), enrollment);
    }

    /// A symmetric group enrollment: any registration id whose key is
    /// HMAC-SHA256(group key, registration id).
    pub fn enroll_group(&self, group_key: &[u8]) {
        self.state().group_key = Some(group_key.to_vec());
    }

    /// TPM attestation needs the service's own TPM to wrap keys with.
    pub fn set_tpm_peer(&self, peer: Swtpm) {
        *self.peer.lock().unwrap_or_else(|p| p.into_inner()) = Some(peer);
    }

    /// Makes the service misbehave (or behave again).
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.state().fault = fault;
    }

    /// Requests seen, as `METHOD path`.
    pub fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }

    /// Plays a parent IoT Edge device (nested edge) in front of the hub
    /// `hub_name`: tokens must be for that hub, while requests come here.
    /// DPS assigns that hub too.
    pub fn stand_in_for_hub(&self, hub_name: &str) {
        self.state().hub = hub_name.to_owned();
    }

    /// The TLS client certificate (leaf DER) of each request that showed
    /// one, in order.
    pub fn client_certs(&self) -> Vec<Vec<u8>> {
        self.state().client_certs.clone()
    }

    /// The body of every DPS registration request, in order.
    pub fn registration_bodies(&self) -> Vec<Value> {
        self.state().registration_bodies.clone()
    }

    /// A device registered in the hub by hand, with a SAS key (manual provisioning).
    pub fn add_sas_device(&self, device: &str, key: &[u8]) {
        self.state()
            .devices
            .insert(device.into(), DeviceAuth::Sas(key.to_vec()));
    }

    /// A device registered in the hub by hand, authenticating with a client
    /// certificate (from the CA given at start, CN = device id).
    pub fn add_x509_device(&self, device: &str) {
        self.state().devices.insert(device.into(), DeviceAuth::X509);
    }

    /// Successful registrations.
    pub fn registrations(&self) -> usize {
        self.state().registrations
    }

    /// The module ids registered with the hub for `device`.
    pub fn modules_of(&self, device: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .state()
            .modules
            .keys()
            .filter(|(d, _)| d == device)
            .map(|(_, m)| m.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Whether the hub would accept `token` from module `module` of `device`.
    pub fn authenticate_module(
        &self,
        device: &str,
        module: &str,
        token: &str,
    ) -> Result<(), String> {
        let state = self.state();
        let Some(ModuleAuth::Sas(key)) = state.modules.get(&(device.into(), module.into())) else {
            return Err(format!(
                "the hub has no SAS module '{module}' on '{device}'"
            ));
        };
        let resource = format!("{}/devices/{device}/modules/{module}", state.hub);
        check_sas(token, &resource, key, None)
    }

    /// HMAC-SHA256 of `data` under the key the hub holds for a SAS module.
    pub fn module_hmac(&self, device: &str, module: &str, data: &[u8]) -> Option<Vec<u8>> {
        match self.state().modules.get(&(device.into(), module.into())) {
            Some(ModuleAuth::Sas(key)) => Some(hmac(key, data)),
            _ => None,
        }
    }

    /// Whether the hub would accept `token` from `device`.
    pub fn authenticate_device(&self, device: &str, token: &str) -> Result<(), String> {
        let state = self.state();
        let Some(DeviceAuth::Sas(key)) = state.devices.get(device) else {
            return Err(format!("the hub has no SAS device '{device}'"));
        };
        check_sas(token, &format!("{}/devices/{device}", state.hub), key, None)
    }

    /// The thumbprint the hub holds for an X.509 module.
    pub fn module_thumbprint(&self, device: &str, module: &str) -> Option<String> {
        match self.state().modules.get(&(device.into(), module.into())) {
            Some(ModuleAuth::Thumbprint(t)) => Some(t.clone()),
            _ => None,
        }
    }
}

/// Checks a SAS token as the services do: the `sr` it signs must name
/// `resource` (case-insensitively, once decoded), `se` must be in the future,
/// `skn` must be `key_name`, and `sig` must be HMAC-SHA256(key, sr + "\n" + se).
pub fn check_sas(
    token: &str,
    resource: &str,
    key: &[u8],
    key_name: Option<&str>,
) -> Result<(), String> {
    let fields = token
        .strip_prefix("SharedAccessSignature ")
        .ok_or("not a SharedAccessSignature")?;
    let mut sr = None;
    let mut sig = None;
    let mut se = None;
    let mut skn = None;
    for field in fields.split('&') {
        let (k, v) = field.split_once('=').ok_or("a field is not k=v")?;
        match k {
            "sr" => sr = Some(v),
            "sig" => sig = Some(v),
            "se" => se = Some(v),
            "skn" => skn = Some(v),
            other => return Err(format!("unknown field {other}")),
        }
    }
    let (sr, sig, se) = (sr.ok_or("no sr")?, sig.ok_or("no sig")?, se.ok_or("no se")?);
    let audience = percent_decode_str(sr)
        .decode_utf8()
        .map_err(|_| "sr is not UTF-8")?;
    if !audience.eq_ignore_ascii_case(resource) {
        return Err(format!("token is for '{audience}', not '{resource}'"));
    }
    let expiry: u64 = se.parse().map_err(|_| "se is not a number")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if expiry <= now {
        return Err("token expired".into());
    }
    let skn = skn.map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned());
    if skn.as_deref() != key_name {
        return Err(format!("skn {skn:?}, expected {key_name:?}"));
    }
    let sig = percent_decode_str(sig)
        .decode_utf8()
        .map_err(|_| "sig is not UTF-8")?;
    let sig = STANDARD
        .decode(sig.as_bytes())
        .map_err(|_| "sig is not base64")?;
    let mut mac = HmacSha256::new_from_slice(key).map_err(|_| "bad key")?;
    mac.update(format!("{sr}\n{se}").as_bytes());
    mac.verify_slice(&sig)
        .map_err(|_| "signature does not verify".to_string())
}

/// HMAC-SHA256(key, data).
pub fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn json_answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = answer(status, body.to_string());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// 202: the registration is being assigned; ask again in a second.
fn assigning(operation_id: &str) -> Response<Full<Bytes>> {
    let mut r = json_answer(
        StatusCode::ACCEPTED,
        json!({ "operationId": operation_id, "status": "assigning" }),
    );
    r.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    r
}

fn refuse(status: StatusCode, why: &str) -> Response<Full<Bytes>> {
    json_answer(
        status,
        json!({ "errorCode": status.as_u16() as u32 * 1000, "message": why }),
    )
}

fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(cn)
}

async fn handle(
    state: &Mutex<State>,
    peer: &Mutex<Option<Swtpm>>,
    cert: Option<Vec<u8>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let auth = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let if_match = req.headers().contains_key(http::header::IF_MATCH);
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
    };
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    let fault = {
        let mut s = lock();
        s.requests.push(format!("{method} {path}"));
        s.client_certs.extend(cert.clone());
        s.fault
    };
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (method.clone(), segs.as_slice()) {
        (Method::PUT, [scope, "registrations", reg, "register"]) => {
            match fault {
                Some(Fault::Garbage) => return answer(StatusCode::OK, "<html>not json</html>"),
                Some(Fault::Unavailable) => return refuse(StatusCode::SERVICE_UNAVAILABLE, "busy"),
                _ => {}
            }
            if *scope != lock().id_scope {
                return refuse(StatusCode::NOT_FOUND, "unknown ID scope");
            }
            let Ok(request) = serde_json::from_slice::<Value>(&body) else {
                return refuse(StatusCode::BAD_REQUEST, "body is not JSON");
            };
            if request["registrationId"].as_str() != Some(*reg) {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "registrationId does not match the path",
                );
            }
            lock().registration_bodies.push(request.clone());
            register(state, peer, reg, &request, auth.as_deref(), cert.as_deref()).await
        }
        (Method::GET, [scope, "registrations", reg, "operations", op]) => {
            match fault {
                Some(Fault::Garbage) => return answer(StatusCode::OK, "{\"status\": 12"),
                Some(Fault::Unavailable) => return refuse(StatusCode::SERVICE_UNAVAILABLE, "busy"),
                _ => {}
            }
            let mut s = lock();
            if *scope != s.id_scope {
                return refuse(StatusCode::NOT_FOUND, "unknown ID scope");
            }
            if let Err(why) = dps_authenticate(&s, reg, auth.as_deref(), cert.as_deref()) {
                return refuse(StatusCode::UNAUTHORIZED, &why);
            }
            let Some((owner, polls)) = s.operations.get_mut(*op) else {
                return refuse(StatusCode::NOT_FOUND, "unknown operation");
            };
            if owner != reg {
                return refuse(StatusCode::NOT_FOUND, "unknown operation");
            }
            if *polls > 0 {
                *polls -= 1;
                return assigning(op);
            }
            s.registrations += 1;
            json_answer(
                StatusCode::OK,
                json!({
                    "operationId": op,
                    "status": "assigned",
                    "registrationState": {
                        "registrationId": reg,
                        "assignedHub": s.hub,
                        "deviceId": reg,
                        "status": "assigned",
                    },
                }),
            )
        }
        (Method::PUT, ["devices", device, "modules", module]) => {
            let mut s = lock();
            if let Err(why) = hub_authenticate(&s, device, auth.as_deref(), cert.as_deref()) {
                return refuse(StatusCode::UNAUTHORIZED, &why);
            }
            let Ok(request) = serde_json::from_slice::<Value>(&body) else {
                return refuse(StatusCode::BAD_REQUEST, "body is not JSON");
            };
            if request["moduleId"].as_str() != Some(*module)
                || request["deviceId"].as_str() != Some(*device)
            {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "deviceId / moduleId do not match the path",
                );
            }
            let authentication = &request["authentication"];
            let module_auth = match authentication["type"].as_str() {
                Some("sas") => {
                    let key = authentication["symmetricKey"]["primaryKey"]
                        .as_str()
                        .and_then(|k| STANDARD.decode(k).ok());
                    match key {
                        Some(k) if (16..=64).contains(&k.len()) => ModuleAuth::Sas(k),
                        _ => return refuse(StatusCode::BAD_REQUEST, "bad symmetricKey"),
                    }
                }
                Some("selfSigned") => {
                    match authentication["x509Thumbprint"]["primaryThumbprint"].as_str() {
                        Some(t) if t.len() == 64 || t.len() == 40 => {
                            ModuleAuth::Thumbprint(t.to_owned())
                        }
                        _ => return refuse(StatusCode::BAD_REQUEST, "bad x509Thumbprint"),
                    }
                }
                _ => return refuse(StatusCode::BAD_REQUEST, "unknown authentication type"),
            };
            let key = (device.to_string(), module.to_string());
            if s.modules.contains_key(&key) && !if_match {
                return refuse(StatusCode::CONFLICT, "module already exists");
            }
            s.modules.insert(key, module_auth);
            json_answer(
                StatusCode::OK,
                json!({ "deviceId": device, "moduleId": module, "generationId": "1" }),
            )
        }
        (Method::DELETE, ["devices", device, "modules", module]) => {
            let mut s = lock();
            if let Err(why) = hub_authenticate(&s, device, auth.as_deref(), cert.as_deref()) {
                return refuse(StatusCode::UNAUTHORIZED, &why);
            }
            match s.modules.remove(&(device.to_string(), module.to_string())) {
                Some(_) => answer(StatusCode::NO_CONTENT, ""),
                None => refuse(StatusCode::NOT_FOUND, "no such module"),
            }
        }
        _ => refuse(StatusCode::NOT_FOUND, "not an API of this test service"),
    }
}

async fn register(
    state: &Mutex<State>,
    peer: &Mutex<Option<Swtpm>>,
    reg: &str,
    request: &Value,
    auth: Option<&str>,
    cert: Option<&[u8]>,
) -> Response<Full<Bytes>> {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    let enrollment = lock().enrollments.get(reg).cloned();
    // TPM, first round: no token yet; challenge with a key only the enrolled TPM can import.
    if let (Some(Enrollment::Tpm(enrolled_ek)), None) = (&enrollment, auth) {
        let Some(srk) = request["tpm"]["storageRootKey"]
            .as_str()
            .and_then(|s| STANDARD.decode(s).ok())
        else {
            return refuse(
                StatusCode::BAD_REQUEST,
                "a TPM registration needs tpm.storageRootKey",
            );
        };
        let mut key = vec![0u8; 32];
        getrandom(&mut key);
        let peer_guard = peer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(peer_tpm) = peer_guard.as_ref() else {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the test service has no TPM peer",
            );
        };
        // Wrapped to the *enrolled* EK: a device with another TPM cannot activate it.
        let blob = wrap_hmac_key(peer_tpm, enrolled_ek, &srk, &key, Wrapping::Honest);
        drop(peer_guard);
        lock().tpm_pending.insert(reg.to_owned(), key);
        return json_answer(
            StatusCode::UNAUTHORIZED,
            json!({ "authenticationKey": STANDARD.encode(blob), "message": "TPM challenge" }),
        );
    }
    let mut s = lock();
    let device_auth = match dps_authenticate(&s, reg, auth, cert) {
        Ok(a) => a,
        Err(why) => return refuse(StatusCode::UNAUTHORIZED, &why),
    };
    let mut op = [0u8; 8];
    getrandom(&mut op);
    let op: String = op.iter().map(|b| format!("{b:02x}")).collect();
    s.operations.insert(op.clone(), (reg.to_owned(), 1));
    s.devices.insert(reg.to_owned(), device_auth);
    assigning(&op)
}

/// DPS: the registration's SAS token (against its enrollment key, the group's
/// derived key, or the key the TPM challenge issued), or its client certificate.
fn dps_authenticate(
    s: &State,
    reg: &str,
    auth: Option<&str>,
    cert: Option<&[u8]>,
) -> Result<DeviceAuth, String> {
    let resource = format!("{}/registrations/{reg}", s.id_scope);
    if let Some(token) = auth {
        let key = match s.enrollments.get(reg) {
            Some(Enrollment::SymmetricKey(k)) => k.clone(),
            Some(Enrollment::Tpm(_)) => s
                .tpm_pending
                .get(reg)
                .cloned()
                .ok_or("no TPM challenge was issued")?,
            Some(Enrollment::X509) => return Err("enrolled for X.509".into()),
            None => match &s.group_key {
                Some(g) => hmac(g, reg.as_bytes()),
                None => return Err("no enrollment".into()),
            },
        };
        check_sas(token, &resource, &key, Some("registration"))?;
        return Ok(DeviceAuth::Sas(key));
    }
    if let Some(der) = cert {
        // rustls already verified the chain against the enrollment CA.
        if !matches!(s.enrollments.get(reg), Some(Enrollment::X509)) {
            return Err("not enrolled for X.509".into());
        }
        if common_name(der).as_deref() != Some(reg) {
            return Err("the certificate's CN is not the registration id".into());
        }
        return Ok(DeviceAuth::X509);
    }
    Err("no credential".into())
}

/// Hub: the device's SAS token or its client certificate (CN = device id).
fn hub_authenticate(
    s: &State,
    device: &str,
    auth: Option<&str>,
    cert: Option<&[u8]>,
) -> Result<(), String> {
    if s.fault == Some(Fault::HubRefusesDevice) {
        return Err("device credential revoked".into());
    }
    match (s.devices.get(device), auth, cert) {
        (Some(DeviceAuth::Sas(key)), Some(token), _) => {
            check_sas(token, &format!("{}/devices/{device}", s.hub), key, None)
        }
        (Some(DeviceAuth::X509), None, Some(der))
            if common_name(der).as_deref() == Some(device) =>
        {
            Ok(())
        }
        (None, _, _) => Err(format!("no device '{device}'")),
        _ => Err("wrong credential".into()),
    }
}

fn getrandom(buf: &mut [u8]) {
    aws_lc_rs::rand::fill(buf).expect("random bytes");
}
