//! The aziot identity API's routes (`/identities/...`, `/trust-bundle` with
//! `?api-version=`), as aziot-identityd serves them: the api-version first,
//! then the route; a body that is not the expected JSON is a 422; a module
//! that does not exist is a 400. Identities carry bearer keyd handles, which
//! sign through keyd's aziot API (that is how aziot-edged makes a module's
//! SAS tokens).
//!
//! Who may do what is identityd's principal model, as on `/v1`: the
//! orchestrator (aziot-edged) and administrators see the device and manage
//! modules; a module principal sees its own identity. `type=local`
//! identities are issued on `POST /identities/modules` (a fresh key and a
//! certificate from certd's local CA each time, kept by no one), so the
//! other routes answer `type=local` with a 400 saying so.

use std::sync::LazyLock;

use edgeid_common::routes::Routes;
use edgeid_common::{ApiError, ApiRequest, ApiResponse};
use http::{Method, StatusCode};
use serde::Serialize;

use super::Service;
use crate::api::aziot::*;
use crate::api::{Auth, AuthType, CreateModuleRequest, DeviceIdentity, ModuleIdentity};
use crate::error::Error;
use crate::identities::{CallerIdentity, DeviceNames, Handles, ProvisioningFacts};
use crate::local::LocalIdentity;

#[derive(Debug, Clone, Copy)]
enum Route {
    Caller,
    Device,
    Reprovision,
    Provisioning,
    ListModules,
    CreateModule,
    GetModule,
    UpdateModule,
    DeleteModule,
    TrustBundle,
}

static ROUTES: LazyLock<Routes<Route>> = LazyLock::new(|| {
    Routes::new(&[
        (Method::GET, "/identities/identity", Route::Caller),
        (Method::POST, "/identities/device", Route::Device),
        (
            Method::POST,
            "/identities/device/reprovision",
            Route::Reprovision,
        ),
        (Method::GET, "/identities/provisioning", Route::Provisioning),
        (Method::GET, "/identities/modules", Route::ListModules),
        (Method::POST, "/identities/modules", Route::CreateModule),
        (Method::GET, "/identities/modules/{id}", Route::GetModule),
        (Method::PUT, "/identities/modules/{id}", Route::UpdateModule),
        (
            Method::DELETE,
            "/identities/modules/{id}",
            Route::DeleteModule,
        ),
        (Method::GET, "/trust-bundle", Route::TrustBundle),
    ])
});

/// `GET /identities/provisioning` is new in this api-version.
const PROVISIONING_SINCE: usize = 1;

impl Service {
    pub(super) async fn handle_aziot(&self, req: ApiRequest) -> ApiResponse {
        let (version, route, params) = match ROUTES.find_versioned(&req, API_VERSIONS) {
            Ok(found) => found,
            Err(answer) => return answer,
        };
        let me = &self.0;
        let caller = &req.caller;
        let id = params.get("id").unwrap_or_default();
        let ok = StatusCode::OK;
        let bearer = Handles::Bearer;
        let one_module = |m: ModuleIdentity| me.device_names().map(|d| module_identity(&d, m));
        macro_rules! body {
            ($t:ty) => {
                match req.required_json_or_unprocessable::<$t>() {
                    Ok(body) => body,
                    Err(e) => return ApiResponse::error(&e),
                }
            };
        }
        macro_rules! hub_type {
            ($t:expr) => {
                if let Err(e) = hub_type($t) {
                    return ApiResponse::error(&e);
                }
            };
        }
        match route {
            Route::Caller => answer(
                ok,
                match me.caller_identity(caller, bearer).await {
                    Ok(CallerIdentity::Device(device)) => Ok(device_identity(device)),
                    Ok(CallerIdentity::Module(module)) => one_module(module),
                    Err(e) => Err(e),
                },
            ),
            Route::Device => {
                let body = body!(DeviceRequest);
                hub_type!(Some(&body.id_type));
                answer(ok, me.device_as(caller, bearer).await.map(device_identity))
            }
            Route::Reprovision => match me.reprovision_now(caller).await {
                Ok(()) => ApiResponse::no_content(),
                Err(e) => ApiResponse::error(&e),
            },
            Route::Provisioning if version < PROVISIONING_SINCE => {
                ApiResponse::error(&ApiError::bad_request(format!(
                    "/identities/provisioning needs api-version {} or later",
                    API_VERSIONS[PROVISIONING_SINCE]
                )))
            }
            Route::Provisioning => answer(ok, me.provisioning_facts(caller).map(provisioning)),
            Route::ListModules => {
                hub_type!(req.query_param("type").as_deref());
                let listed = me.list_modules_as(caller, bearer).await.and_then(|list| {
                    let device = me.device_names()?;
                    let identities = list
                        .modules
                        .into_iter()
                        .map(|m| module_identity(&device, m))
                        .collect();
                    Ok(IdentityList { identities })
                });
                answer(ok, listed)
            }
            Route::CreateModule => {
                let body = body!(ModuleRequest);
                if body.id_type == ID_TYPE_LOCAL {
                    let server = matches!(
                        body.local_id_opts,
                        Some(LocalIdOpts::X509 {
                            attributes: LocalIdAttr::Server
                        })
                    );
                    let issued = me
                        .issue_local_identity(caller, &body.module_id, server)
                        .await;
                    return answer(ok, issued.map(local_identity));
                }
                hub_type!(Some(&body.id_type));
                let create = CreateModuleRequest {
                    module_id: body.module_id,
                };
                let created = me.create_module_as(caller, create, bearer).await;
                answer(ok, created.and_then(|(m, _)| one_module(m)))
            }
            Route::GetModule if req.query_param("type").as_deref() == Some(ID_TYPE_LOCAL) => {
                let issued = me.principals_local_identity(caller, id).await;
                answer(ok, issued.map(local_identity))
            }
            Route::GetModule => {
                hub_type!(req.query_param("type").as_deref());
                let module = me.get_module_as(caller, id, bearer).await;
                answer(ok, module.and_then(one_module))
            }
            Route::UpdateModule => {
                // Keys are derived from the module id and generation, so an
                // update of a module here has nothing to change: it answers
                // the identity. One not here is registered with the hub
                // with edgeid's keys, replacing the hub's: aziot-edged's
                // watchdog updates $edgeAgent, which IoT Hub makes for
                // every edge device, and the reference answers it so.
                hub_type!(req.query_param("type").as_deref());
                let update = CreateModuleRequest {
                    module_id: id.to_owned(),
                };
                let module = me.create_module_as(caller, update, bearer).await;
                answer(ok, module.and_then(|(m, _)| one_module(m)))
            }
            Route::DeleteModule => {
                hub_type!(req.query_param("type").as_deref());
                match me.delete_module(caller, id).await {
                    Ok(()) => ApiResponse::no_content(),
                    Err(e) => ApiResponse::error(&aziot_error(e)),
                }
            }
            Route::TrustBundle => answer(
                ok,
                me.trust_bundle(caller)
                    .await
                    .map(|certificate| TrustBundle { certificate }),
            ),
        }
    }
}

/// A module identity in the aziot shape, with the device's hub and id.
fn module_identity(device: &DeviceNames, module: ModuleIdentity) -> Identity {
    Identity::Aziot(AzureIotSpec {
        hub_name: device.hub.clone(),
        gateway_host: device.gateway_host.clone(),
        device_id: device.device_id.clone(),
        module_id: Some(module.module_id),
        gen_id: Some(module.generation_id),
        auth: Some(auth(module.auth)),
    })
}

/// The `type` of a request: `aziot`, or a 400 saying what is wrong.
fn hub_type(id_type: Option<&str>) -> Result<(), ApiError> {
    match id_type {
        Some(ID_TYPE_AZIOT) => Ok(()),
        Some(ID_TYPE_LOCAL) => Err(ApiError::bad_request(
            "type=local identities are issued anew (by POST /identities/modules, or a principal's by GET) and kept by no one; there is none to list, update or delete",
        )),
        Some(other) => Err(ApiError::bad_request(format!("invalid type: {other}"))),
        None => Err(ApiError::bad_request("type: missing parameter")),
    }
}

fn local_identity(local: LocalIdentity) -> Identity {
    Identity::Local(LocalIdSpec {
        module_id: local.module_id,
        auth: LocalAuthenticationInfo {
            private_key: local.private_key,
            certificate: local.certificate,
            expiration: local.expiration,
        },
    })
}

fn device_identity(device: DeviceIdentity) -> Identity {
    Identity::Aziot(AzureIotSpec {
        gateway_host: device.gateway.unwrap_or_else(|| device.hub.clone()),
        hub_name: device.hub,
        device_id: device.device_id,
        module_id: None,
        gen_id: None,
        auth: Some(auth(device.auth)),
    })
}

fn auth(auth: Auth) -> AuthenticationInfo {
    AuthenticationInfo {
        auth_type: match auth.auth_type {
            AuthType::Sas => "sas",
            AuthType::X509 => "x509",
        }
        .to_owned(),
        key_handle: auth.key_handle,
        cert_id: auth.cert_id,
    }
}

fn provisioning(facts: ProvisioningFacts) -> ProvisioningInfo {
    match facts {
        ProvisioningFacts::Manual { x509 } => ProvisioningInfo::Manual {
            auth: if x509 { "x509" } else { "sas" }.to_owned(),
        },
        ProvisioningFacts::Dps {
            auth,
            endpoint,
            scope_id,
            registration_id,
            payload,
        } => ProvisioningInfo::Dps {
            auth: auth.to_owned(),
            endpoint,
            scope_id,
            registration_id,
            payload,
        },
        ProvisioningFacts::Local => ProvisioningInfo::None,
    }
}

/// A module that does not exist is the reference's 400.
fn aziot_error(e: Error) -> ApiError {
    let status = match e {
        Error::NotFound(_) => StatusCode::BAD_REQUEST,
        _ => edgeid_common::HttpError::status(&e),
    };
    ApiError::new(status, edgeid_common::HttpError::public_message(&e))
}

fn answer<T: Serialize>(ok: StatusCode, result: Result<T, Error>) -> ApiResponse {
    match result {
        Ok(body) => ApiResponse::json(ok, &body),
        Err(e) => ApiResponse::error(&aziot_error(e)),
    }
}
