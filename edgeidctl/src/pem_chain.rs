//! Chains and bundles as the SPIFFE Workload API sends them (DER
//! certificates one after another) and as files hold them (PEM).

/// The DER certificates one after another in `bytes`, as the Workload API
/// sends chains and bundles.
pub fn certificates(mut bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(bytes)
            .map_err(|e| format!("a chain or bundle holds something not a certificate: {e}"))?;
        let used = bytes.len() - rest.len();
        out.push(&bytes[..used]);
        bytes = rest;
    }
    Ok(out)
}

pub fn pem_of(label: &str, ders: &[&[u8]]) -> String {
    ders.iter()
        .map(|d| pem::encode(&pem::Pem::new(label, d.to_vec())))
        .collect()
}
