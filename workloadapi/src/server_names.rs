//! Which names a module's server certificate may carry.
//!
//! Every module trusts the device CA's bundle, so a server certificate
//! for a name is the power to be that name to every module (and to every
//! leaf device behind the gateway). IoT Edge's runtime issues one for
//! whatever `commonName` a module asks; workloadd is stricter. A module's
//! server certificate may name:
//! - the module itself (its id less a leading `$`, as a DNS name, in any case);
//! - the gateway host name (`certificates.gateway_hostname`), if the module is
//!   the hub (`certificates.hub_module`, edgeHub unless configured);
//! - what `certificates.server_names` grants that module: DNS names, `*.`
//!   followed by a domain (one more label, as a certificate wildcard
//!   matches), and IP addresses.
//!
//! Nothing else: not `localhost`, not another module's id, not an IP
//! address nobody granted.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::config::{is_dns_name, CertificatePolicy};

/// A requested name, checked for shape: a DNS name or an IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerName {
    /// A DNS name, as asked (case kept).
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
}

impl ServerName {
    /// `name` as a DNS name or an IP address; `None` if it is neither.
    pub fn parse(name: &str) -> Option<Self> {
        match name.parse::<IpAddr>() {
            Ok(ip) => Some(Self::Ip(ip)),
            Err(_) if is_dns_name(name) => Some(Self::Dns(name.to_owned())),
            Err(_) => None,
        }
    }
}

/// A module's own name as a DNS name (`$edgeHub` → `edgeHub`), if its id
/// is one.
pub fn own_name(module_id: &str) -> Option<&str> {
    let name = module_id.strip_prefix('$').unwrap_or(module_id);
    is_dns_name(name).then_some(name)
}

/// Whether `module_id` may have a server certificate for `name`; if not, a
/// message saying which names it may have and how to grant more.
pub fn check(policy: &CertificatePolicy, module_id: &str, name: &ServerName) -> Result<(), String> {
    if allowed(policy, module_id, name) {
        return Ok(());
    }
    let shown = match name {
        ServerName::Dns(d) => d.clone(),
        ServerName::Ip(ip) => ip.to_string(),
    };
    let mut may: Vec<String> = own_name(module_id).map(str::to_owned).into_iter().collect();
    if is_hub(policy, module_id) {
        may.extend(policy.gateway_hostname.iter().cloned());
    }
    may.extend(granted(&policy.server_names, module_id).iter().cloned());
    Err(format!(
        "module '{module_id}' may not have a server certificate for '{shown}': its names are [{}] \
         (grant more in workloadd's certificates.server_names; the gateway host name is the hub module's alone)",
        may.join(", ")
    ))
}

fn allowed(policy: &CertificatePolicy, module_id: &str, name: &ServerName) -> bool {
    let grants = granted(&policy.server_names, module_id);
    match name {
        ServerName::Ip(ip) => grants
            .iter()
            .any(|g| g.parse::<IpAddr>().is_ok_and(|granted| granted == *ip)),
        ServerName::Dns(dns) => {
            own_name(module_id).is_some_and(|own| own.eq_ignore_ascii_case(dns))
                || (is_hub(policy, module_id)
                    && policy
                        .gateway_hostname
                        .as_deref()
                        .is_some_and(|g| g.eq_ignore_ascii_case(dns)))
                || grants.iter().any(|g| dns_matches(g, dns))
        }
    }
}

fn is_hub(policy: &CertificatePolicy, module_id: &str) -> bool {
    // Module ids are case-sensitive in IoT Hub; `$edgeHub` is exact.
    policy.hub_module == module_id
}

fn granted<'a>(names: &'a BTreeMap<String, Vec<String>>, module_id: &str) -> &'a [String] {
    names.get(module_id).map(Vec::as_slice).unwrap_or_default()
}

/// `grant` (a DNS name or `*.domain`) matches `dns`, in any case; `*`
/// stands for exactly one label, as in a certificate.
fn dns_matches(grant: &str, dns: &str) -> bool {
    match grant.strip_prefix("*.") {
        Some(domain) => dns
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(domain)),
        None => grant.eq_ignore_ascii_case(dns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CertificatePolicy {
        let mut p = CertificatePolicy {
            gateway_hostname: Some("gateway.example.com".into()),
            ..Default::default()
        };
        p.server_names.insert(
            "mod-a".into(),
            vec![
                "mod-a.local".into(),
                "*.svc.local".into(),
                "10.0.0.7".into(),
            ],
        );
        p
    }

    fn ok(module: &str, name: &str) -> bool {
        check(&policy(), module, &ServerName::parse(name).unwrap()).is_ok()
    }

    #[test]
    fn a_module_has_its_own_name_and_what_it_is_granted() {
        assert!(ok("mod-a", "mod-a"));
        assert!(ok("mod-a", "MOD-A"));
        assert!(ok("mod-a", "mod-a.local"));
        assert!(ok("mod-a", "x.svc.local"));
        assert!(ok("mod-a", "10.0.0.7"));
        assert!(ok("$edgeHub", "edgehub"));
        assert!(ok("$edgeHub", "Gateway.Example.com"));
    }

    #[test]
    fn nothing_else() {
        for name in [
            "mod-b",
            "localhost",
            "127.0.0.1",
            "::1",
            "gateway.example.com",
            "svc.local",
            "a.b.svc.local",
            "mod-a.local.evil",
            "10.0.0.8",
        ] {
            assert!(!ok("mod-a", name), "{name}");
        }
        // The gateway name is the hub's alone; its id is exact.
        assert!(!ok("$edgehub", "gateway.example.com"));
        assert!(!ok("mod-b", "mod-a.local"));
        let e = check(&policy(), "mod-a", &ServerName::parse("localhost").unwrap()).unwrap_err();
        assert!(
            e.contains("'localhost'") && e.contains("mod-a.local"),
            "{e}"
        );
    }

    #[test]
    fn grants_are_checked_for_shape() {
        use crate::config::check_server_name_grant as check_grant;
        for good in ["a.local", "*.svc.local", "::1", "host"] {
            assert!(check_grant(good).is_ok(), "{good}");
        }
        for bad in ["*", "*.local", "a b", "x.*.local", "*.", "a..b", ""] {
            assert!(check_grant(bad).is_err(), "{bad}");
        }
    }
}
