//! `edgeidctl factory`: what a factory line does to a device before it ships,
//! with no network at the station (only the running keyd and certd):
//!
//! - `init`: the identity key is created in the key store keyd puts it in
//!   (TPM, HSM), and the line gets the registration id, the TPM's endorsement
//!   key (for a DPS TPM enrollment) and a CSR signed by that key;
//! - `import-cert FILE`: the certificate the line's CA issued is checked
//!   against the key and the CA, and installed in certd with the CA bundle;
//! - `verify`: the key signs, and the installed chain validates to the bundle.
//!
//! Every step is safe to run again. Progress is recorded in
//! `<state>/factory.json`, so a run that stopped half-way is finished by
//! running it again, and a device that is done is not silently redone.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use edgeid_certd::signer::KeydKey;
use edgeid_certd::CertdClient;
use edgeid_keyd::api::{KeyPairSpec, SignAlgorithm};
use edgeid_keyd::KeydClient;
use serde::{Deserialize, Serialize};

/// Options every factory step shares.
#[derive(clap::Args)]
pub struct FactoryArgs {
    /// The identity key's id in keyd.
    #[arg(long, default_value = "device-id")]
    pub key_id: String,
    /// The identity certificate's id in certd.
    #[arg(long, default_value = "device-id")]
    pub cert_id: String,
    /// Where factory progress is recorded (0700).
    #[arg(long, default_value = "/var/lib/edgeid/factory")]
    pub state_dir: PathBuf,
    /// `text` or `json`.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub output: String,
}

/// `edgeidctl factory ...`
#[derive(clap::Subcommand)]
pub enum FactoryAction {
    /// Create the identity key (idempotent) and print the registration id,
    /// the TPM endorsement key (if any) and a CSR.
    Init {
        /// The registration id / certificate CN (default: the host name).
        #[arg(long)]
        registration_id: Option<String>,
        /// The key's type, when it is created.
        #[arg(long, default_value = "ec-p256")]
        spec: String,
        /// Also write `<id>.csr.pem` and `<id>.json` here.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Start over on a device that finished (keeps the key).
        #[arg(long)]
        force: bool,
    },
    /// Install the issued certificate chain (leaf first) after checking it
    /// certifies the identity key and chains to the CA bundle.
    ImportCert {
        /// The chain, PEM.
        file: PathBuf,
        /// The CA certificates the chain must lead to, PEM.
        #[arg(long)]
        ca_bundle: PathBuf,
    },
    /// Prove the key signs and the installed chain validates to the bundle.
    Verify,
}

/// What `init` tells the line.
#[derive(Debug, Serialize, Deserialize)]
pub struct InitReport {
    /// The registration id (the CSR's CN).
    pub registration_id: String,
    /// The key's id in keyd.
    pub key_id: String,
    /// Its SubjectPublicKeyInfo, PEM.
    pub public_key_pem: String,
    /// The CSR, PEM.
    pub csr_pem: String,
    /// The TPM endorsement key (TPM2B_PUBLIC, base64), when keyd has a TPM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endorsement_key: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    /// `initialized` or `certified`.
    stage: String,
    registration_id: String,
    key_id: String,
    cert_id: String,
}

fn progress_file(state: &Path) -> PathBuf {
    state.join("factory.json")
}

fn read_progress(state: &Path) -> Result<Option<Progress>, String> {
    let file = progress_file(state);
    match std::fs::read(&file) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            format!(
                "{} is damaged ({e}); remove it to start over",
                file.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", file.display())),
    }
}

fn write_progress(state: &Path, p: &Progress) -> Result<(), String> {
    edgeid_common::fs::ensure_dir(state, 0o700)
        .map_err(|e| format!("cannot make {}: {e}", state.display()))?;
    let file = progress_file(state);
    let json = serde_json::to_vec_pretty(p).map_err(|e| e.to_string())?;
    edgeid_common::fs::write_atomic(&file, &json, 0o600)
        .map_err(|e| format!("cannot write {}: {e}", file.display()))
}

fn parse_spec(spec: &str) -> Result<KeyPairSpec, String> {
    serde_json::from_value(serde_json::Value::String(spec.to_owned())).map_err(|_| {
        format!(
            "--spec '{spec}' is not one of ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096, ed25519"
        )
    })
}

/// Runs a factory step.
pub async fn run(run_dir: &Path, args: &FactoryArgs, action: &FactoryAction) -> Result<(), String> {
    let keyd = KeydClient::new(run_dir.join("keyd.sock"));
    let certd = CertdClient::new(run_dir.join("certd.sock"));
    match action {
        FactoryAction::Init {
            registration_id,
            spec,
            out_dir,
            force,
        } => {
            init(
                &keyd,
                args,
                registration_id.clone(),
                spec,
                out_dir.as_deref(),
                *force,
            )
            .await
        }
        FactoryAction::ImportCert { file, ca_bundle } => {
            import_cert(&keyd, &certd, args, file, ca_bundle).await
        }
        FactoryAction::Verify => verify(&keyd, &certd, args).await,
    }
}

async fn init(
    keyd: &KeydClient,
    args: &FactoryArgs,
    registration_id: Option<String>,
    spec: &str,
    out_dir: Option<&Path>,
    force: bool,
) -> Result<(), String> {
    let previous = read_progress(&args.state_dir)?;
    if let Some(p) = &previous {
        if p.stage == "certified" && !force {
            return Err(format!(
                "this device finished factory provisioning as '{}'; `factory verify` checks it, --force starts over",
                p.registration_id
            ));
        }
    }
    let registration_id = match (registration_id, &previous) {
        (Some(r), _) => r,
        (None, Some(p)) => p.registration_id.clone(),
        (None, None) => {
            crate::daemons::hostname().map_err(|e| format!("{e}; give --registration-id"))?
        }
    };
    edgeid_identityd::names::check_device_id(&registration_id)
        .map_err(|e| format!("registration id '{registration_id}': {e}"))?;
    let spec = parse_spec(spec)?;
    // Create-or-load: a second run keeps the key the first one made.
    keyd.create_key_pair(&args.key_id, spec)
        .await
        .map_err(|e| format!("keyd: creating key '{}': {e}", args.key_id))?;
    let key = KeydKey::load(keyd, &args.key_id)
        .await
        .map_err(|e| format!("keyd: key '{}': {e}", args.key_id))?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, registration_id.as_str());
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| format!("building the CSR through keyd: {e}"))?;
    let endorsement_key = keyd
        .tpm_attestation_keys()
        .await
        .ok()
        .map(|k| STANDARD.encode(&k.endorsement_key.public.0));
    let report = InitReport {
        registration_id: registration_id.clone(),
        key_id: args.key_id.clone(),
        public_key_pem: pem::encode(&pem::Pem::new("PUBLIC KEY", key.spki_der().to_vec())),
        csr_pem: csr,
        endorsement_key,
    };
    write_progress(
        &args.state_dir,
        &Progress {
            stage: "initialized".into(),
            registration_id: registration_id.clone(),
            key_id: args.key_id.clone(),
            cert_id: args.cert_id.clone(),
        },
    )?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        for (name, text) in [
            (
                format!("{registration_id}.csr.pem"),
                report.csr_pem.as_str(),
            ),
            (format!("{registration_id}.json"), json.as_str()),
        ] {
            let path = dir.join(name);
            edgeid_common::fs::write_atomic(&path, text.as_bytes(), 0o644)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
    }
    if args.output == "json" {
        outln!("{json}");
    } else {
        outln!("registration id: {registration_id}");
        outln!("key:             {} in keyd", args.key_id);
        if let Some(ek) = &report.endorsement_key {
            outln!("TPM endorsement key (TPM2B_PUBLIC, base64): {ek}");
        }
        out!("{}", report.csr_pem);
    }
    Ok(())
}

/// The DER certificates of a PEM text.
fn ders(text: &str, what: &str) -> Result<Vec<Vec<u8>>, String> {
    let blocks = pem::parse_many(text).map_err(|e| format!("{what}: not PEM: {e}"))?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.into_contents())
        .collect();
    if certs.is_empty() {
        return Err(format!("{what}: holds no certificate"));
    }
    Ok(certs)
}

fn parse_cert(der: &[u8]) -> Result<x509_parser::certificate::X509Certificate<'_>, String> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| format!("unreadable certificate: {e}"))
}

/// Checks that `chain` (leaf first) links up to a certificate in `bundle`:
/// each certificate is signed by the next, the last by a bundle CA.
fn chains_to(chain: &[Vec<u8>], bundle: &[Vec<u8>]) -> Result<(), String> {
    let certs = chain
        .iter()
        .map(|d| parse_cert(d))
        .collect::<Result<Vec<_>, _>>()?;
    let cas = bundle
        .iter()
        .map(|d| parse_cert(d))
        .collect::<Result<Vec<_>, _>>()?;
    for pair in certs.windows(2) {
        pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .map_err(|_| {
                format!(
                    "'{}' is not signed by '{}'",
                    pair[0].subject(),
                    pair[1].subject()
                )
            })?;
    }
    let top = certs.last().ok_or("the chain is empty")?;
    let anchored = cas.iter().any(|ca| {
        ca.subject() == top.issuer() && top.verify_signature(Some(ca.public_key())).is_ok()
    }) || cas
        .iter()
        .any(|ca| ca.subject() == top.subject() && ca.public_key().raw == top.public_key().raw);
    if !anchored {
        return Err(format!(
            "'{}' does not chain to any CA in the bundle",
            top.subject()
        ));
    }
    let now = x509_parser::time::ASN1Time::now();
    for c in &certs {
        if !c.validity().is_valid_at(now) {
            return Err(format!("'{}' is not valid now", c.subject()));
        }
    }
    Ok(())
}

async fn import_cert(
    keyd: &KeydClient,
    certd: &CertdClient,
    args: &FactoryArgs,
    file: &Path,
    ca_bundle: &Path,
) -> Result<(), String> {
    let progress = read_progress(&args.state_dir)?
        .ok_or("no `factory init` has run on this device (no factory.json); run it first")?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let bundle_text = std::fs::read_to_string(ca_bundle)
        .map_err(|e| format!("cannot read {}: {e}", ca_bundle.display()))?;
    let chain = ders(&text, &file.display().to_string())?;
    let bundle = ders(&bundle_text, &ca_bundle.display().to_string())?;
    // The leaf must certify *this* device's key: checked before anything changes.
    let handle = keyd
        .key_pair(&progress.key_id)
        .await
        .map_err(|e| format!("keyd: key '{}': {e}", progress.key_id))?;
    let public = keyd
        .public_key(&handle)
        .await
        .map_err(|e| format!("keyd: public key of '{}': {e}", progress.key_id))?;
    let spki = pem::parse(&public.pem)
        .map_err(|e| e.to_string())?
        .into_contents();
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| format!("{}: unreadable certificate: {e}", file.display()))?;
    if leaf.public_key().raw != spki.as_slice() {
        return Err(format!(
            "{} certifies another key, not this device's '{}'; nothing was installed",
            file.display(),
            progress.key_id
        ));
    }
    chains_to(&chain, &bundle)
        .map_err(|e| format!("{}: {e}; nothing was installed", file.display()))?;
    certd
        .import(&progress.cert_id, &text, Some(&progress.key_id))
        .await
        .map_err(|e| format!("certd: importing '{}': {e}", progress.cert_id))?;
    let bundle_file = args.state_dir.join("ca-bundle.pem");
    edgeid_common::fs::write_atomic(&bundle_file, bundle_text.as_bytes(), 0o644)
        .map_err(|e| format!("cannot write {}: {e}", bundle_file.display()))?;
    write_progress(
        &args.state_dir,
        &Progress {
            stage: "certified".into(),
            ..progress
        },
    )?;
    outln!(
        "installed certificate '{}' for key '{}'; CA bundle in {}",
        args.cert_id,
        args.key_id,
        bundle_file.display()
    );
    Ok(())
}

async fn verify(keyd: &KeydClient, certd: &CertdClient, args: &FactoryArgs) -> Result<(), String> {
    let progress = read_progress(&args.state_dir)?
        .ok_or("no `factory init` has run on this device (no factory.json)")?;
    if progress.stage != "certified" {
        return Err(format!(
            "factory provisioning stopped after '{}': run `factory import-cert`",
            progress.stage
        ));
    }
    let info = certd
        .get(&progress.cert_id)
        .await
        .map_err(|e| format!("certd: certificate '{}': {e}", progress.cert_id))?;
    let chain = ders(&info.pem, "the installed certificate")?;
    let bundle_text = std::fs::read_to_string(args.state_dir.join("ca-bundle.pem"))
        .map_err(|e| format!("the CA bundle from import-cert is missing: {e}"))?;
    chains_to(&chain, &ders(&bundle_text, "the CA bundle")?)?;
    // The key signs, and the certificate's public key verifies it.
    let key_id = info.key_id.unwrap_or(progress.key_id);
    let handle = keyd
        .key_pair(&key_id)
        .await
        .map_err(|e| format!("keyd: key '{key_id}': {e}"))?;
    let spec = keyd
        .public_key(&handle)
        .await
        .map_err(|e| format!("keyd: {e}"))?
        .spec;
    let (algorithm, verifier): (
        SignAlgorithm,
        &dyn aws_lc_rs::signature::VerificationAlgorithm,
    ) = match spec {
        KeyPairSpec::EcP256 => (
            SignAlgorithm::EcdsaSha256,
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
        ),
        KeyPairSpec::EcP384 => (
            SignAlgorithm::EcdsaSha384,
            &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1,
        ),
        KeyPairSpec::Ed25519 => (SignAlgorithm::Ed25519, &aws_lc_rs::signature::ED25519),
        _ => (
            SignAlgorithm::RsaPkcs1Sha256,
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        ),
    };
    let challenge = format!("edgeid factory verify {}", progress.registration_id);
    let signature = keyd
        .sign(&handle, algorithm, challenge.as_bytes(), false)
        .await
        .map_err(|e| format!("keyd: signing with '{key_id}': {e}"))?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| e.to_string())?;
    aws_lc_rs::signature::UnparsedPublicKey::new(
        verifier,
        leaf.public_key().subject_public_key.data.as_ref(),
    )
    .verify(challenge.as_bytes(), &signature)
    .map_err(|_| {
        format!("key '{key_id}' signed, but the certificate's public key does not verify it")
    })?;
    outln!(
        "verified: '{}' signs with key '{key_id}', and certificate '{}' chains to the CA bundle",
        progress.registration_id,
        progress.cert_id
    );
    Ok(())
}
