//! Dispatch on path and method: unknown paths get 404, known paths with the
//! wrong method get 405 with an `Allow` header.

use std::collections::BTreeMap;

use http::{Method, StatusCode};
use percent_encoding::percent_decode_str;

use crate::error::ApiError;
use crate::server::{ApiRequest, ApiResponse};

/// A route table mapping (method, path pattern) to a daemon's own route value.
/// Patterns use `{name}` for one segment and `{*name}` for the rest of the path.
pub struct Routes<R> {
    router: matchit::Router<Vec<(Method, R)>>,
}

/// Path parameters, percent-decoded.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// The decoded value of `{name}`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl<R: Copy> Routes<R> {
    /// Builds the table. Patterns are the daemon's own constants, so a bad one is
    /// a programming error found by the first test that starts the daemon.
    pub fn new(entries: &[(Method, &str, R)]) -> Self {
        let mut by_path: BTreeMap<&str, Vec<(Method, R)>> = BTreeMap::new();
        for (method, path, route) in entries {
            by_path
                .entry(path)
                .or_default()
                .push((method.clone(), *route));
        }
        let mut router = matchit::Router::new();
        for (path, methods) in by_path {
            if let Err(e) = router.insert(path, methods) {
                panic!("route pattern {path} is invalid: {e}");
            }
        }
        Self { router }
    }

    /// For a family whose every route takes `?api-version=` (the aziot
    /// APIs): the version first, as the reference's servers check it, so a
    /// request without one is a 400 whatever its path ([`check_api_version`]);
    /// then the route. Answers the version's index, the route and its
    /// parameters.
    pub fn find_versioned(
        &self,
        req: &ApiRequest,
        versions: &[&str],
    ) -> Result<(usize, R, Params), ApiResponse> {
        let version = check_api_version(req.query_param("api-version").as_deref(), versions)
            .map_err(|e| ApiResponse::error(&e))?;
        let (route, params) = self.find(&req.method, &req.path)?;
        Ok((version, route, params))
    }

    /// Finds the route for a request, or the 404 / 405 / 400 answer.
    pub fn find(&self, method: &Method, path: &str) -> Result<(R, Params), ApiResponse> {
        let matched = self.router.at(path).map_err(|_| {
            ApiResponse::error(&ApiError::not_found(format!("no such path: {path}")))
        })?;
        let Some((_, route)) = matched.value.iter().find(|(m, _)| m == method) else {
            let allow = matched
                .value
                .iter()
                .map(|(m, _)| m.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let err = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} is not allowed on {path}; allowed: {allow}"),
            );
            return Err(ApiResponse::error(&err).with_header(http::header::ALLOW, &allow));
        };
        let mut params = Vec::new();
        for (name, raw) in matched.params.iter() {
            let value = percent_decode_str(raw).decode_utf8().map_err(|_| {
                ApiResponse::error(&ApiError::bad_request(format!(
                    "path parameter '{name}' is not valid UTF-8"
                )))
            })?;
            params.push((name.to_owned(), value.into_owned()));
        }
        Ok((*route, Params(params)))
    }
}

/// Whether a path is edgeid's own API (`/v1/...`); every other path of a
/// daemon that serves a second family (the aziot APIs) is that family's.
pub fn is_edgeid_path(path: &str) -> bool {
    path.starts_with("/v1/")
}

/// Checks an `api-version` query value against the exact set a wire family
/// serves (oldest first), as the IoT Edge and aziot servers do, before any
/// route: missing or unknown is a 400 that begins as theirs and names the
/// versions served. Answers the version's index, so later versions compare
/// greater.
pub fn check_api_version(version: Option<&str>, supported: &[&str]) -> Result<usize, ApiError> {
    let list = || supported.join(", ");
    match version {
        None => Err(ApiError::bad_request(format!(
            "api-version not specified; supported: {}",
            list()
        ))),
        Some(v) => supported.iter().position(|s| *s == v).ok_or_else(|| {
            let shown: String = v.chars().take(64).flat_map(char::escape_default).collect();
            ApiError::bad_request(format!(
                "invalid api-version \"{shown}\"; supported: {}",
                list()
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum R {
        List,
        Get,
        Delete,
    }

    fn table() -> Routes<R> {
        Routes::new(&[
            (Method::GET, "/v1/things", R::List),
            (Method::GET, "/v1/things/{*id}", R::Get),
            (Method::DELETE, "/v1/things/{*id}", R::Delete),
        ])
    }

    #[test]
    fn dispatches_and_decodes() {
        let (r, p) = table().find(&Method::GET, "/v1/things/module%2Fa").unwrap();
        assert_eq!(r, R::Get);
        assert_eq!(p.get("id"), Some("module/a"));
        let (r, p) = table()
            .find(&Method::DELETE, "/v1/things/module/a")
            .unwrap();
        assert_eq!(r, R::Delete);
        assert_eq!(p.get("id"), Some("module/a"));
        assert_eq!(table().find(&Method::GET, "/v1/things").unwrap().0, R::List);
    }

    #[test]
    fn api_versions_are_an_exact_set() {
        let set = ["2020-09-01", "2021-05-01"];
        assert_eq!(check_api_version(Some("2021-05-01"), &set).unwrap(), 1);
        for bad in ["2021-05-02", "2020-09-01 ", "", "\u{1b}[31m"] {
            let e = check_api_version(Some(bad), &set).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(
                e.message.starts_with("invalid api-version"),
                "{}",
                e.message
            );
            assert!(!e.message.contains('\u{1b}'), "{}", e.message);
        }
        let e = check_api_version(None, &set).unwrap_err();
        assert!(e.message.starts_with("api-version not specified"));
    }

    #[test]
    fn unknown_path_404_wrong_method_405() {
        let e = table().find(&Method::GET, "/v2/x").unwrap_err();
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let e = table().find(&Method::POST, "/v1/things").unwrap_err();
        assert_eq!(e.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
