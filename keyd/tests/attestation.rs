//! keyd's attestation key on a TPM (swtpm, fresh per test), each answer
//! checked by a verifier that is not edgeid: tpm2_makecredential (with no TPM
//! of its own) for the AK's activation, tpm2_checkquote for quotes,
//! tpm2_print for attestation structures, openssl for signatures.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use edgeid_attest::{Bank, PcrValues};
use edgeid_common::authz::{Admins, Grants};
use edgeid_common::client::ClientError;
use edgeid_common::encoding::Base64Bytes;
use edgeid_keyd::api::{KeyPairSpec, SignAlgorithm, SymmetricKeyType, TpmQuoteResponse};
use edgeid_keyd::backend::BackendKind;
use edgeid_keyd::config::PrincipalConfig;
use edgeid_testkit::{openssl, require_tool, KeydFixture, Swtpm};
use http::StatusCode;
use sha2::Digest;

fn status(err: ClientError) -> StatusCode {
    err.status()
        .unwrap_or_else(|| panic!("expected an HTTP error status, got: {err}"))
}

/// keyd (in this process) with keys in `tpm` except `soft/*`, and the
/// event logs read from `dir/firmware.log` and `dir/ima.log`.
async fn keyd_on(tpm: &Swtpm, dir: &Path) -> KeydFixture {
    let mut config = KeydFixture::config_in(dir);
    let mut tpm_config = tpm.keyd_config();
    tpm_config.event_logs.firmware = dir.join("firmware.log");
    tpm_config.event_logs.ima = dir.join("ima.log");
    config.backend.default = BackendKind::Tpm;
    config.backend.overrides = vec![edgeid_keyd::config::BackendOverride {
        keys: Grants::parse(&["soft/*"]).unwrap(),
        backend: BackendKind::Software,
    }];
    config.tpm = Some(tpm_config);
    config.derive_only = Grants::parse(&["base"]).unwrap();
    KeydFixture::configured(config, Admins::root_and_self()).await
}

/// A tpm2-tools command that needs no TPM (`-T none` where it takes one).
fn tool(name: &str, args: &[&str]) -> Output {
    require_tool(name, "tpm2-tools");
    Command::new("timeout")
        .arg("30")
        .arg(name)
        .args(args)
        .output()
        .expect("run tpm2-tools")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

/// The PCR file tpm2_checkquote reads, for the values keyd answered.
fn pcrs_file(pcrs: &BTreeMap<String, BTreeMap<u32, Base64Bytes>>) -> Vec<u8> {
    let values: PcrValues = pcrs
        .iter()
        .map(|(bank, values)| {
            let bank = Bank::parse(bank).unwrap();
            (
                bank,
                values.iter().map(|(i, v)| (*i, v.0.clone())).collect(),
            )
        })
        .collect();
    edgeid_attest::pcr_file::write(&values).unwrap()
}

/// A reset (all-zero) SHA-256 PCR after extending it with `digests`.
fn replayed(digests: &[[u8; 32]]) -> Vec<u8> {
    let mut pcr = [0u8; 32];
    for d in digests {
        let mut h = sha2::Sha256::new();
        h.update(pcr);
        h.update(d);
        pcr = h.finalize().into();
    }
    pcr.to_vec()
}

/// The AK is made once and kept; a verifier who knows only the EK public and
/// the AK's name makes a credential (tpm2_makecredential -T none) whose
/// secret only this TPM recovers — not for another AK name, not for
/// another TPM's EK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ak_is_proved_to_a_verifier_who_knows_only_the_ek() {
    let tpm = Swtpm::start();
    let other = Swtpm::start();
    let dir = edgeid_testkit::temp_dir();
    let work = dir.path().join("verifier");
    std::fs::create_dir(&work).unwrap();
    let mut keyd = keyd_on(&tpm, dir.path()).await;
    let client = keyd.client();
    let ak = client.tpm_ak().await.unwrap();
    assert_eq!(
        client.tpm_ak().await.unwrap().name.0,
        ak.name.0,
        "made once"
    );

    // The AK as tpm2-tools reads it: restricted ECDSA P-256, fixed to this TPM,
    // and its name is SHA-256 over its public area.
    let ak_pub = write(&work, "ak.pub", &ak.public.0);
    let printed = ok(
        &tool("tpm2_print", &["-t", "TPM2B_PUBLIC", &ak_pub]),
        "print",
    );
    for attribute in [
        "fixedtpm",
        "fixedparent",
        "sensitivedataorigin",
        "restricted",
        "sign",
    ] {
        assert!(printed.contains(attribute), "{attribute}: {printed}");
    }
    assert!(
        printed.contains("ecdsa") && printed.contains("NIST p256"),
        "{printed}"
    );
    let mut name = vec![0x00, 0x0b];
    name.extend(sha2::Sha256::digest(&ak.public.0[2..]));
    assert_eq!(ak.name.0, name, "name = nameAlg || SHA-256(TPMT_PUBLIC)");

    // The verifier's credential, for this TPM's EK and the AK's name.
    let ek = client.tpm_attestation_keys().await.unwrap().endorsement_key;
    let ek_pub = write(&work, "ek.pub", &ek.public.0);
    let secret = b"verifier's secret 0123456789abc";
    let secret_file = write(&work, "secret", secret);
    let make = |ek: &str, name: &[u8], out: &str| {
        let out = work.join(out).display().to_string();
        let made = tool(
            "tpm2_makecredential",
            &[
                "-T",
                "none",
                "-u",
                ek,
                "-s",
                &secret_file,
                "-n",
                &hex::encode(name),
                "-o",
                &out,
            ],
        );
        ok(&made, "tpm2_makecredential");
        std::fs::read(out).unwrap()
    };
    let credential = make(&ek_pub, &ak.name.0, "good.cred");
    assert_eq!(
        &credential[..4],
        &[0xba, 0xdc, 0xc0, 0xde],
        "tpm2-tools' file"
    );
    let recovered = client.tpm_ak_activate(&credential).await.unwrap();
    assert_eq!(recovered.as_slice(), secret);
    // The bare two structures (without tpm2-tools' header) work the same.
    let recovered = client.tpm_ak_activate(&credential[8..]).await.unwrap();
    assert_eq!(recovered.as_slice(), secret);

    // For another object's name: the TPM refuses (the AK is not that object).
    let srk = client.tpm_attestation_keys().await.unwrap().storage_key;
    let mut srk_name = vec![0x00, 0x0b];
    srk_name.extend(sha2::Sha256::digest(&srk.public.0[2..]));
    let wrong = make(&ek_pub, &srk_name, "wrong-name.cred");
    let err = client.tpm_ak_activate(&wrong).await.unwrap_err();
    assert_eq!(status(err), StatusCode::BAD_REQUEST);
    // For another TPM's EK: this TPM cannot decrypt it.
    keyd.stop().await;
    let dir2 = edgeid_testkit::temp_dir();
    let mut other_keyd = keyd_on(&other, dir2.path()).await;
    let other_ek = other_keyd
        .client()
        .tpm_attestation_keys()
        .await
        .unwrap()
        .endorsement_key;
    other_keyd.stop().await;
    let other_ek_pub = write(&work, "other-ek.pub", &other_ek.public.0);
    let foreign = make(&other_ek_pub, &ak.name.0, "other-tpm.cred");
    keyd.restart().await;
    let client = keyd.client();
    let err = client.tpm_ak_activate(&foreign).await.unwrap_err();
    assert_eq!(status(err), StatusCode::BAD_REQUEST);
    // Junk: 400, with what is wrong.
    for junk in [
        &b""[..],
        b"\xba\xdc\xc0\xde\0\0\0\x02",
        b"\x00\x05ab",
        &credential[..credential.len() - 1],
    ] {
        let err = client.tpm_ak_activate(junk).await.unwrap_err();
        assert_eq!(status(err), StatusCode::BAD_REQUEST, "{junk:?}");
    }
    // The AK survives keyd's restart (its blobs are kept): the same name.
    assert_eq!(client.tpm_ak().await.unwrap().name.0, ak.name.0);
    // And it is no key a caller can name or list.
    let listed = client.list_keys().await.unwrap();
    assert!(listed.is_empty(), "{listed:?}");
}

/// A quote of PCRs extended by tpm2-tools verifies with tpm2_checkquote
/// (AK PEM, the TPMS_ATTEST, TPMT_SIGNATURE and the PCR file); the values
/// are the ones the extends made; a wrong nonce, a changed PCR value or
/// another AK fail it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quote_verifies_with_tpm2_checkquote() {
    let mut tpm = Swtpm::start();
    let dir = edgeid_testkit::temp_dir();
    let work = dir.path().join("verifier");
    std::fs::create_dir(&work).unwrap();
    // Measurements, as firmware would make them (before keyd connects).
    let events: Vec<[u8; 32]> = (1u8..=3)
        .map(|i| sha2::Sha256::digest([i]).into())
        .collect();
    let extend = events
        .iter()
        .map(|d| format!("tpm2_pcrextend 0:sha256={} && ", hex::encode(d)))
        .collect::<String>();
    let script = format!(
        "{extend} tpm2_pcrextend 7:sha256={}",
        hex::encode(events[0])
    );
    let out = tpm.tpm2_script(&script);
    ok(&out, "tpm2_pcrextend");
    let keyd = keyd_on(&tpm, dir.path()).await;
    let client = keyd.client();
    let ak = client.tpm_ak().await.unwrap();
    let ak_pem = write(&work, "ak.pem", ak.pem.as_bytes());
    let nonce = b"a verifier's nonce";
    // More than eight PCRs: two TPML_DIGESTs in the file, two PCR reads in keyd.
    let selection: Vec<u32> = (0..=10).collect();
    let quote = client
        .tpm_quote(nonce, &[("sha256".into(), selection.clone())], 0)
        .await
        .unwrap();
    let values = &quote.pcrs["sha256"];
    assert_eq!(values.keys().copied().collect::<Vec<_>>(), selection);
    assert_eq!(values[&0].0, replayed(&events), "PCR 0 = the three extends");
    assert_eq!(values[&7].0, replayed(&events[..1]));
    assert_eq!(values[&3].0, vec![0; 32], "untouched PCR");
    assert!(quote.clock.clock > 0);
    // No logs on this "device": each says why, and the quote is still whole.
    for log in [&quote.event_logs.firmware, &quote.event_logs.ima] {
        assert!(log.data.is_none(), "{log:?}");
        assert!(
            log.error
                .as_deref()
                .unwrap_or_default()
                .contains("does not exist"),
            "{log:?}"
        );
    }
    // The logs as the kernel would show them: the firmware log whole, IMA's
    // from the offset the verifier asks for.
    let firmware_log = vec![0x5a; 3000];
    let ima_log: Vec<u8> = (0..=255).cycle().take(5000).collect();
    std::fs::write(dir.path().join("firmware.log"), &firmware_log).unwrap();
    std::fs::write(dir.path().join("ima.log"), &ima_log).unwrap();
    let logged = client
        .tpm_quote(nonce, &[("sha256".into(), vec![10])], 4096)
        .await
        .unwrap();
    let firmware = &logged.event_logs.firmware;
    assert_eq!(firmware.data.as_ref().unwrap().0, firmware_log);
    assert!(firmware.complete && firmware.offset == 0);
    let ima = &logged.event_logs.ima;
    assert_eq!(ima.data.as_ref().unwrap().0, ima_log[4096..]);
    assert!(ima.complete && ima.offset == 4096);
    let past = client
        .tpm_quote(nonce, &[("sha256".into(), vec![10])], 9999)
        .await
        .unwrap();
    assert_eq!(
        past.event_logs.ima.data.as_ref().unwrap().0,
        b"",
        "nothing new"
    );

    let check = |quote: &TpmQuoteResponse, pem: &str, nonce: &[u8], tag: &str| -> Output {
        let msg = write(&work, &format!("{tag}.msg"), &quote.attest.0);
        let sig = write(&work, &format!("{tag}.sig"), &quote.signature.0);
        let pcrs = write(&work, &format!("{tag}.pcrs"), &pcrs_file(&quote.pcrs));
        tool(
            "tpm2_checkquote",
            &[
                "-u",
                pem,
                "-m",
                &msg,
                "-s",
                &sig,
                "-f",
                &pcrs,
                "-g",
                "sha256",
                "-q",
                &hex::encode(nonce),
            ],
        )
    };
    ok(&check(&quote, &ak_pem, nonce, "good"), "tpm2_checkquote");
    // The DER form of the signature verifies with openssl over the same bytes.
    assert!(openssl::verify(
        SignAlgorithm::EcdsaSha256,
        &ak.pem,
        &quote.attest.0,
        &quote.signature_der.0
    ));
    // What tpm2_print decodes: the nonce and the clock keyd reported.
    let msg = write(&work, "print.msg", &quote.attest.0);
    let printed = ok(&tool("tpm2_print", &["-t", "TPMS_ATTEST", &msg]), "print");
    assert!(
        printed.contains(&format!("extraData: {}", hex::encode(nonce))),
        "{printed}"
    );
    assert!(printed.contains(&format!("resetCount: {}", quote.clock.reset_count)));

    let wrong_nonce = check(&quote, &ak_pem, b"another nonce!", "nonce");
    assert!(!wrong_nonce.status.success(), "a wrong nonce passed");
    let mut changed = quote.clone();
    changed
        .pcrs
        .get_mut("sha256")
        .unwrap()
        .get_mut(&7)
        .unwrap()
        .0[0] ^= 1;
    assert!(
        !check(&changed, &ak_pem, nonce, "pcr").status.success(),
        "a changed PCR passed"
    );
    let other_pem = write(
        &work,
        "other.pem",
        client
            .public_key(
                &client
                    .create_key_pair("soft/other", KeyPairSpec::EcP256)
                    .await
                    .unwrap(),
            )
            .await
            .unwrap()
            .pem
            .as_bytes(),
    );
    assert!(
        !check(&quote, &other_pem, nonce, "key").status.success(),
        "another key passed"
    );

    // Two banks in one quote, and a second quote over another nonce is another quote.
    let both = client
        .tpm_quote(
            b"nonce number two",
            &[("sha1".into(), vec![0]), ("sha256".into(), vec![0, 7])],
            0,
        )
        .await
        .unwrap();
    assert_eq!(both.pcrs.len(), 2);
    ok(
        &check(&both, &ak_pem, b"nonce number two", "banks"),
        "two banks",
    );
}

/// TPMS_ATTEST of TPM2_Certify, read by hand from TPM 2.0 Part 2 (10.12.12):
/// magic, type, qualifiedSigner, extraData, clockInfo, firmwareVersion,
/// then TPMS_CERTIFY_INFO's name and qualifiedName.
struct CertifyAttest {
    magic: u32,
    kind: u16,
    extra_data: Vec<u8>,
    name: Vec<u8>,
}

impl CertifyAttest {
    fn parse(bytes: &[u8]) -> Self {
        let mut at = 0;
        let mut take = |n: usize| {
            let field = &bytes[at..at + n];
            at += n;
            field.to_vec()
        };
        let magic = u32::from_be_bytes(take(4).try_into().unwrap());
        let kind = u16::from_be_bytes(take(2).try_into().unwrap());
        let sized = |take: &mut dyn FnMut(usize) -> Vec<u8>| {
            let n = u16::from_be_bytes(take(2).try_into().unwrap());
            take(usize::from(n))
        };
        let _signer = sized(&mut take);
        let extra_data = sized(&mut take);
        let _clock = take(8 + 4 + 4 + 1);
        let _firmware = take(8);
        let name = sized(&mut take);
        let _qualified = sized(&mut take);
        assert_eq!(take(0), b"", "nothing after TPMS_CERTIFY_INFO");
        Self {
            magic,
            kind,
            extra_data,
            name,
        }
    }
}

/// TPM2_Certify: the AK vouches that a keyd key lives in this TPM. The
/// attestation names the key (its name is SHA-256 of the public area keyd
/// answers), carries the nonce, and the AK's signature verifies with openssl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certify_proves_a_key_is_in_this_tpm() {
    let tpm = Swtpm::start();
    let dir = edgeid_testkit::temp_dir();
    let work = dir.path().join("verifier");
    std::fs::create_dir(&work).unwrap();
    let keyd = keyd_on(&tpm, dir.path()).await;
    let client = keyd.client();
    let ak = client.tpm_ak().await.unwrap();
    let nonce = b"certify nonce 1";
    for (id, spec) in [
        ("device", Some(KeyPairSpec::EcP256)),
        ("rsa", Some(KeyPairSpec::Rsa2048)),
        ("mac", None),
    ] {
        let handle = match spec {
            Some(spec) => client.create_key_pair(id, spec).await.unwrap(),
            None => client
                .create_key(id, SymmetricKeyType::HmacSha256, None)
                .await
                .unwrap(),
        };
        let certified = client.tpm_certify(&handle, Some(nonce)).await.unwrap();
        let mut name = vec![0x00, 0x0b];
        name.extend(sha2::Sha256::digest(&certified.public.0[2..]));
        assert_eq!(certified.name.0, name, "{id}");
        // tpm2_print (5.4) does not decode TPMS_CERTIFY_INFO: read it by the spec.
        let attest = CertifyAttest::parse(&certified.attest.0);
        assert_eq!(attest.magic, 0xff54_4347, "TPM_GENERATED_VALUE");
        assert_eq!(attest.kind, 0x8017, "TPM_ST_ATTEST_CERTIFY");
        assert_eq!(attest.extra_data, nonce);
        assert_eq!(attest.name, name, "{id}: the certified name");
        // And as libtss2's own unmarshaller (tss-esapi's `Attest`) reads it.
        {
            use tss_esapi::structures::{Attest, AttestInfo};
            use tss_esapi::traits::UnMarshall;
            let decoded = Attest::unmarshall(&certified.attest.0).unwrap();
            assert_eq!(decoded.extra_data().value(), nonce);
            let AttestInfo::Certify { info } = decoded.attested() else {
                panic!("{id}: not a TPMS_CERTIFY_INFO");
            };
            assert_eq!(info.name().value(), &name[..], "{id}: libtss2's name");
        }
        let public = write(&work, &format!("{id}.pub"), &certified.public.0);
        let shown = ok(
            &tool("tpm2_print", &["-t", "TPM2B_PUBLIC", &public]),
            "print",
        );
        assert!(shown.contains("fixedtpm"), "{id}: {shown}");
        assert!(
            openssl::verify(
                SignAlgorithm::EcdsaSha256,
                &ak.pem,
                &certified.attest.0,
                &certified.signature_der.0
            ),
            "{id}: the AK's signature"
        );
        if let Some(spec) = spec {
            // The certified public area is the key keyd signs with.
            let pem = client.public_key(&handle).await.unwrap().pem;
            let from_tpm = ok(
                &tool("tpm2_print", &["-t", "TPM2B_PUBLIC", "-f", "pem", &public]),
                "print pem",
            );
            assert_eq!(from_tpm.trim(), pem.replace("\r\n", "\n").trim(), "{spec}");
        }
    }
    // Without a nonce, too.
    let handle = client.key_pair("device").await.unwrap();
    client.tpm_certify(&handle, None).await.unwrap();
    // A key outside the TPM, or derived outside it: 400 saying so.
    let soft = client
        .create_key_pair("soft/x", KeyPairSpec::EcP256)
        .await
        .unwrap();
    let err = client.tpm_certify(&soft, None).await.unwrap_err();
    let said = err.to_string();
    assert_eq!(status(err), StatusCode::BAD_REQUEST);
    assert!(
        said.contains("'soft/x' is kept in the software store, not in the TPM"),
        "{said}"
    );
    let base = client
        .create_key("base", SymmetricKeyType::HmacSha256, None)
        .await
        .unwrap();
    let derived = client.derive(&base, b"module").await.unwrap();
    let err = client.tpm_certify(&derived, None).await.unwrap_err();
    let said = err.to_string();
    assert_eq!(status(err), StatusCode::BAD_REQUEST);
    assert!(said.contains("computed outside the TPM"), "{said}");
    // A short nonce: 400.
    let err = client
        .tpm_certify(&handle, Some(b"short"))
        .await
        .unwrap_err();
    assert_eq!(status(err), StatusCode::BAD_REQUEST);
}

/// Bad selections and nonces get a 400 that says what is wrong; a caller
/// without the `tpm/quote` grant gets 403 before the TPM is touched; a keyd
/// without a TPM answers 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotes_refuse_bad_input_and_callers_without_the_grant() {
    let tpm = Swtpm::start();
    let dir = edgeid_testkit::temp_dir();
    let keyd = keyd_on(&tpm, dir.path()).await;
    let client = keyd.client();
    let sha256 = |pcrs: &[u32]| vec![("sha256".to_owned(), pcrs.to_vec())];
    type Selection = Vec<(String, Vec<u32>)>;
    let cases: Vec<(&[u8], Selection, &str)> = vec![
        (b"1234567", sha256(&[0]), "8-64 bytes"),
        (&[7; 65], sha256(&[0]), "8-64 bytes"),
        (b"12345678", sha256(&[24]), "PCR 24 does not exist"),
        (b"12345678", sha256(&[1, 1]), "twice"),
        (b"12345678", sha256(&[]), "names no PCR"),
        (b"12345678", vec![], "at least one PCR"),
        (
            b"12345678",
            vec![("md5".into(), vec![0])],
            "unknown PCR bank",
        ),
    ];
    for (nonce, pcrs, why) in cases {
        let err = client.tpm_quote(nonce, &pcrs, 0).await.unwrap_err();
        let shown = err.to_string();
        assert_eq!(status(err), StatusCode::BAD_REQUEST, "{why}");
        assert!(shown.contains(why), "{why}: {shown}");
    }
    let (code, body) = client
        .transport()
        .raw(
            http::Method::POST,
            "/v1/tpm/quote",
            r#"{"nonce":"AAAAAAAAAAA=","pcrs":{"sha256":[0]},"extra":1}"#.into(),
        )
        .await
        .unwrap();
    assert!(code.is_client_error(), "unknown field: {code} {body:?}");
    let mut keyd = keyd;
    keyd.stop().await;

    // A principal granted keys but not `tpm/quote`.
    let mut config = KeydFixture::config_in(dir.path());
    config.backend.default = BackendKind::Tpm;
    config.tpm = Some(tpm.keyd_config());
    config.principals = vec![PrincipalConfig {
        name: "identityd".into(),
        uid: edgeid_common::current_uid(),
        keys: Grants::parse(&["device-*", "tpm/attestation-keys"]).unwrap(),
        export: Grants::default(),
    }];
    let mut keyd = KeydFixture::configured(config.clone(), Admins::only(vec![])).await;
    let client = keyd.client();
    let handle = client
        .create_key_pair("device-1", KeyPairSpec::EcP256)
        .await
        .unwrap();
    assert_eq!(
        status(client.tpm_ak().await.unwrap_err()),
        StatusCode::FORBIDDEN
    );
    let err = client
        .tpm_quote(b"12345678", &sha256(&[0]), 0)
        .await
        .unwrap_err();
    assert_eq!(status(err), StatusCode::FORBIDDEN);
    let err = client.tpm_certify(&handle, None).await.unwrap_err();
    assert_eq!(status(err), StatusCode::FORBIDDEN);
    assert_eq!(
        status(client.tpm_ak_activate(b"x").await.unwrap_err()),
        StatusCode::FORBIDDEN
    );
    keyd.stop().await;
    // With the grant, the same principal quotes.
    config.principals[0].keys = Grants::parse(&["device-*", "tpm/quote"]).unwrap();
    let keyd = KeydFixture::configured(config, Admins::only(vec![])).await;
    keyd.client()
        .tpm_quote(b"12345678", &sha256(&[0]), 0)
        .await
        .unwrap();

    // No TPM configured: 404.
    let plain = KeydFixture::start().await;
    assert_eq!(
        status(plain.client().tpm_ak().await.unwrap_err()),
        StatusCode::NOT_FOUND
    );
}
