//! `edgeidctl check`: is this device set up right? Each check is a line
//! (pass / warn / fail) with a fix hint; `--output json` for tooling; the exit
//! status is non-zero if any check failed. Nothing missing (a daemon, a
//! device, a file) makes it crash: that is a failed check.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use edgeid_common::server::Health;
use serde::Serialize;

use crate::daemons::{Daemon, DAEMONS};

/// Options of `check`.
pub struct Check {
    /// The user-edited config file.
    pub config: PathBuf,
    /// The root the daemons' configs are under.
    pub root: PathBuf,
    /// The daemons' sockets.
    pub run_dir: PathBuf,
    /// JSON instead of lines.
    pub json: bool,
}

/// One finding.
#[derive(Debug, Serialize)]
pub struct Finding {
    /// What was checked.
    pub check: String,
    /// `pass`, `warn` or `fail`.
    pub status: &'static str,
    /// What was found.
    pub detail: String,
    /// How to fix it (warn and fail).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn pass(&mut self, check: impl Into<String>, detail: impl Into<String>) {
        self.push(check, "pass", detail, "");
    }
    fn warn(&mut self, check: impl Into<String>, detail: impl Into<String>, hint: &str) {
        self.push(check, "warn", detail, hint);
    }
    fn fail(&mut self, check: impl Into<String>, detail: impl Into<String>, hint: &str) {
        self.push(check, "fail", detail, hint);
    }
    fn push(
        &mut self,
        check: impl Into<String>,
        status: &'static str,
        detail: impl Into<String>,
        hint: &str,
    ) {
        self.0.push(Finding {
            check: check.into(),
            status,
            detail: detail.into(),
            hint: hint.to_owned(),
        });
    }
}

/// `edgeidctl check`.
pub async fn check(opts: &Check) -> Result<(), String> {
    let mut f = Findings::default();
    config_checks(opts, &mut f);
    aziot_state_check(opts, &mut f);
    grant_checks(opts, &mut f);
    let healths = daemon_checks(opts, &mut f).await;
    backend_checks(&healths, &mut f);
    clock_check(&mut f);
    certificate_checks(opts, &mut f).await;
    cloud_checks(opts, &mut f).await;

    if opts.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&f.0).map_err(|e| e.to_string())?
        );
    } else {
        for x in &f.0 {
            outln!("[{}] {}: {}", x.status, x.check, x.detail);
            if !x.hint.is_empty() {
                outln!("       fix: {}", x.hint);
            }
        }
    }
    let failed = f.0.iter().filter(|x| x.status == "fail").count();
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} check(s) failed"))
    }
}

/// What an aziot-identity-service this package replaced left behind.
fn aziot_state_check(opts: &Check, f: &mut Findings) {
    let left = crate::aziot::state::not_imported(&opts.root);
    if !left.is_empty() {
        f.warn(
            "aziot state",
            format!(
                "the reference's state in /var/lib/aziot is not imported: {}",
                left.join("; ")
            ),
            "nothing to do if that is acceptable (the device's identity is kept); keep /var/lib/aziot until it is, or reinstall aziot-identity-service",
        );
    }
}

fn config_checks(opts: &Check, f: &mut Findings) {
    let apply = crate::config_apply::Apply {
        config: opts.config.clone(),
        root: opts.root.clone(),
        dry_run: true,
        no_restart: true,
        only: None,
    };
    match crate::config_apply::check_only(&apply) {
        Ok(()) => f.pass("config", format!("{} is valid", opts.config.display())),
        Err(e) => f.fail(
            "config",
            e,
            "edit /etc/edgeid/config.toml (see packaging/config.toml.template), then `edgeidctl config apply`",
        ),
    }
    for &Daemon {
        name: daemon, user, ..
    } in &DAEMONS
    {
        let file = opts.root.join(format!("etc/edgeid/{daemon}.d/config.toml"));
        let check = format!("{daemon} config file");
        match std::fs::metadata(&file) {
            Err(e) => f.fail(
                check,
                format!("{}: {e}", file.display()),
                "run `edgeidctl config apply`",
            ),
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                let owner = crate::config_apply::user(&opts.root, user)
                    .ok()
                    .map(|(u, _)| u);
                if mode != 0o600 {
                    f.fail(
                        check,
                        format!("{} is mode {mode:o}, not 600", file.display()),
                        "run `edgeidctl config apply` (it rewrites it 0600)",
                    );
                } else if owner.is_some_and(|u| u != meta.uid()) {
                    f.fail(
                        check,
                        format!(
                            "{} is owned by uid {}, not {user}",
                            file.display(),
                            meta.uid()
                        ),
                        "run `edgeidctl config apply` as root",
                    );
                } else {
                    f.pass(check, format!("{} 0600, {user}'s", file.display()));
                }
            }
        }
    }
    for (daemon, user) in [
        ("keyd", "aziotks"),
        ("certd", "aziotcs"),
        ("identityd", "aziotid"),
    ] {
        let dir = opts.root.join(format!("var/lib/edgeid/{daemon}"));
        let check = format!("{daemon} state directory");
        match std::fs::metadata(&dir) {
            Err(e) => f.warn(
                check,
                format!("{}: {e}", dir.display()),
                "systemd-tmpfiles --create (the package does this), or start the daemon once",
            ),
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => f.fail(
                check,
                format!(
                    "{} is mode {:o}: others can read it",
                    dir.display(),
                    meta.permissions().mode() & 0o777
                ),
                &format!(
                    "chmod 700 {}; chown {user} {}",
                    dir.display(),
                    dir.display()
                ),
            ),
            Ok(_) => f.pass(check, format!("{} is private", dir.display())),
        }
    }
}

/// Grants broader than a deployment means: a pattern that matches every
/// key or certificate id (`*`, `**`), every name (`**`), or a `**` that is
/// not a whole segment (`module**` is `module*`, not a subtree).
fn grant_checks(opts: &Check, f: &mut Findings) {
    for (daemon, fields) in [
        ("keyd", &["keys", "export"][..]),
        ("certd", &["certs", "names"][..]),
    ] {
        let file = opts.root.join(format!("etc/edgeid/{daemon}.d/config.toml"));
        let check = format!("{daemon} grants");
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue; // its absence is the config file check's finding
        };
        let config: toml::Table = match toml::from_str(&text) {
            Ok(c) => c,
            Err(_) => continue, // so is a file the daemon cannot read
        };
        let mut broad = Vec::new();
        let principals = config.get("principal").and_then(toml::Value::as_array);
        for p in principals.into_iter().flatten() {
            let name = p.get("name").and_then(toml::Value::as_str).unwrap_or("?");
            for &field in fields {
                let patterns = p.get(field).and_then(toml::Value::as_array);
                for pattern in patterns
                    .into_iter()
                    .flatten()
                    .filter_map(toml::Value::as_str)
                {
                    if let Some(why) = too_broad(field, pattern) {
                        broad.push(format!("{name}: {field} '{pattern}' {why}"));
                    }
                }
            }
        }
        if broad.is_empty() {
            f.pass(
                check,
                format!("no grant in {} is broader than one subtree", file.display()),
            );
        } else {
            f.warn(
                check,
                broad.join("; "),
                "grant the ids a principal needs (`module/*`, `workload/**`); `*` and `?` stop at `/`, `**` spans a subtree only as a whole segment",
            );
        }
    }
}

/// Why a grant pattern is broader than meant, if it is.
fn too_broad(field: &str, pattern: &str) -> Option<&'static str> {
    let segments: Vec<&str> = pattern.split('/').collect();
    if segments.iter().any(|s| s.contains("**") && *s != "**") {
        return Some("has a `**` inside a segment, where it is `*`: write `a/**` for a subtree");
    }
    if pattern == "**" || segments.iter().all(|s| *s == "**") {
        return Some("matches everything");
    }
    if field != "names" && segments.iter().all(|s| s.chars().all(|c| c == '*')) {
        return Some("matches every id at its depth");
    }
    None
}

async fn daemon_checks(opts: &Check, f: &mut Findings) -> Vec<(String, Health)> {
    let mut healths = Vec::new();
    for d in &DAEMONS {
        let daemon = d.name;
        let socket = opts.run_dir.join(d.socket);
        let check = format!("{daemon} answers");
        // A daemon this check woke (socket activation) may still be provisioning
        // the device: that is a moment, not a failure; wait for its outcome.
        let settle_until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut health = d.health(&opts.run_dir).await;
        while let Ok(h) = &health {
            let in_progress = h.backends.values().any(|v| v == "provisioning")
                && h.backends
                    .values()
                    .all(|v| v == "ok" || v == "provisioning");
            if !in_progress || std::time::Instant::now() >= settle_until {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            health = d.health(&opts.run_dir).await;
        }
        match health {
            Ok(h) if h.status == "ok" => {
                f.pass(check, format!("{} ({})", socket.display(), h.version));
                healths.push((daemon.to_owned(), h));
            }
            Ok(h) => {
                let why: Vec<String> = h
                    .backends
                    .iter()
                    .filter(|(_, v)| v.as_str() != "ok")
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect();
                f.fail(
                    check,
                    format!("{} is {}: {}", socket.display(), h.status, why.join(", ")),
                    &format!("journalctl -u edgeid-{daemon}"),
                );
                healths.push((daemon.to_owned(), h));
            }
            Err(e) => f.fail(
                check,
                e,
                &format!(
                    "systemctl enable --now edgeid-{daemon}.socket; journalctl -u edgeid-{daemon}"
                ),
            ),
        }
    }
    healths
}

fn backend_checks(healths: &[(String, Health)], f: &mut Findings) {
    let Some((_, keyd)) = healths.iter().find(|(d, _)| d == "keyd") else {
        return;
    };
    for (backend, state) in &keyd.backends {
        let check = format!("key store {backend}");
        let hint = match backend.as_str() {
            "tpm" => "is /dev/tpmrm0 there and keyd in the tss group? check [keys.tpm] tcti and owner_auth_file",
            "pkcs11" => "check [keys.pkcs11] library, token_label and pin_file (0600, the user PIN)",
            _ => "check [keys] master_key_file and /var/secrets/edgeid/keyd",
        };
        if state == "ok" {
            f.pass(check, "reachable");
        } else {
            f.fail(check, state.clone(), hint);
        }
    }
}

fn clock_check(f: &mut Findings) {
    // Nothing edgeid issues can predate its own release year.
    const EARLIEST: u64 = 1_704_067_200; // 2024-01-01
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if now < EARLIEST {
        f.fail(
            "clock",
            format!("the system time is {now} s after 1970, before 2024"),
            "set the clock (timedatectl set-ntp true): certificates and tokens depend on it",
        );
    } else {
        f.pass("clock", "after 2024-01-01");
    }
}

async fn certificate_checks(opts: &Check, f: &mut Findings) {
    let certd = edgeid_certd::CertdClient::new(opts.run_dir.join("certd.sock"));
    let Ok(ids) = certd.list().await else {
        return;
    };
    let now = time::OffsetDateTime::now_utc();
    for id in ids {
        let check = format!("certificate {id}");
        let Ok(info) = certd.get(&id).await else {
            continue;
        };
        let Ok(not_after) = time::OffsetDateTime::parse(
            &info.not_after,
            &time::format_description::well_known::Rfc3339,
        ) else {
            f.warn(
                check,
                format!("unreadable expiry '{}'", info.not_after),
                "edgeidctl cert show",
            );
            continue;
        };
        let left = not_after - now;
        if left <= time::Duration::ZERO {
            f.fail(
                check,
                format!("expired {}", info.not_after),
                "see certd's log for why renewal failed: journalctl -u edgeid-certd",
            );
        } else if left < time::Duration::days(7) && info.renewal.is_none() {
            f.warn(
                check,
                format!("expires {} and is not renewed by certd", info.not_after),
                "import a new one, or issue it through certd so it renews",
            );
        } else if left < time::Duration::days(2) {
            f.warn(
                check,
                format!("expires {}", info.not_after),
                "renewal should have run: journalctl -u edgeid-certd",
            );
        } else {
            f.pass(check, format!("expires {}", info.not_after));
        }
    }
}

async fn cloud_checks(opts: &Check, f: &mut Findings) {
    let file = opts.root.join("etc/edgeid/identityd.d/config.toml");
    let Ok(config) = edgeid_identityd::IdentitydConfig::load(&file) else {
        return;
    };
    use edgeid_identityd::config::ProvisioningConfig as P;
    let mut endpoints = Vec::new();
    match &config.provisioning {
        P::Dps(d) => {
            if let Ok(a) = edgeid_identityd::cloud::authority_of(&d.global_endpoint) {
                endpoints.push(("DPS", a));
            }
        }
        P::Manual(m) => {
            if let Some(h) = &m.hub {
                endpoints.push(("hub", h.clone()));
            }
        }
        P::Local(_) => {}
    }
    let state = opts.root.join("var/lib/edgeid/identityd/device.json");
    if let Ok(text) = std::fs::read_to_string(&state) {
        if let Ok(d) = serde_json::from_str::<edgeid_identityd::store::DeviceRecord>(&text) {
            if d.source != "local" {
                endpoints.push(("hub", d.hub));
            }
        }
    }
    let mut cloud = config.cloud.clone();
    cloud.attempts = 1;
    cloud.timeout_secs = 10;
    let Ok(client) = edgeid_identityd::cloud::Cloud::new(&cloud, false) else {
        f.fail(
            "cloud TLS",
            "cannot read cloud.trust_anchors",
            "check [cloud] trust_anchors",
        );
        return;
    };
    for (what, authority) in endpoints {
        let check = format!("{what} {authority}");
        let call = edgeid_identityd::cloud::Call::new(http::Method::GET, &authority, "/".into());
        match client.once(&call).await {
            Ok(reply) => f.pass(check, format!("TLS handshake done; it answered {}", reply.status)),
            Err(e) => f.fail(check, e.to_string(), "check DNS, the firewall (443 out), the proxy ([cloud] proxy or https_proxy) and [cloud] trust_anchors"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::too_broad;

    #[test]
    fn broad_grants_are_told_apart_from_narrow_ones() {
        for narrow in ["module/*", "workload/**", "device-id.r*", "spiffe-jwt/*"] {
            assert_eq!(too_broad("keys", narrow), None, "{narrow}");
        }
        for name in ["*", "spiffe://**", "*.module.local"] {
            assert_eq!(too_broad("names", name), None, "{name}");
        }
        for (field, broad) in [
            ("keys", "*"),
            ("keys", "**"),
            ("certs", "*/**"),
            ("keys", "module**"),
            ("names", "**"),
            ("names", "spiffe://td**"),
        ] {
            assert!(too_broad(field, broad).is_some(), "{field} {broad}");
        }
    }
}
