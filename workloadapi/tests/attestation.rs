//! Module attestation: a module asks the workload API (and the gRPC service
//! on the SPIFFE socket) for a TPM quote over its backend's nonce; keyd's TPM
//! is swtpm. The backend's side is played with nothing of workloadd's:
//! it recomputes the qualifying data from the documented recipe with sha2,
//! and tpm2_checkquote checks the quote against it. Another module's quote
//! does not pass for this one's, and a module cannot ask in another's name.

use std::process::Command;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use edgeid_attest::{Bank, Evidence};
use edgeid_common::authz::Admins;
use edgeid_keyd::backend::BackendKind;
use edgeid_testkit::workload::Stack;
use edgeid_testkit::{require_tool, KeydFixture, Swtpm, WorkloadFixture};
use edgeid_workloadapi::config::SpiffeConfig;
use edgeid_workloadapi::spiffe::client;
use edgeid_workloadapi::spiffe::proto::attestation::module_attestation_client::ModuleAttestationClient;
use edgeid_workloadapi::spiffe::proto::attestation::QuoteRequest;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Digest;

const V: &str = "api-version=2022-08-03";
const OTHER_UID: u32 = 4201;
const TD: &str = "attest.example";

/// The recipe the workload API documents, computed here independently.
fn expected_qualifying(module: &str, nonce: &[u8]) -> Vec<u8> {
    let mut h = sha2::Sha256::new();
    h.update(format!(
        "edgeid module attestation v1\nedge-1\n{module}\nspiffe://{TD}/edge-1/{module}\n"
    ));
    h.update(nonce);
    h.finalize().to_vec()
}

/// tpm2_checkquote on a quote's files, for qualifying data `q`.
fn checkquote(dir: &std::path::Path, evidence: &Evidence, q: &[u8]) -> bool {
    evidence.write(dir).unwrap();
    let f = |n: &str| dir.join(n).display().to_string();
    Command::new("tpm2_checkquote")
        .args([
            "-u",
            &f("ak.pem"),
            "-m",
            &f("quote.msg"),
            "-s",
            &f("quote.sig"),
        ])
        .args([
            "-f",
            &f("quote.pcrs"),
            "-g",
            "sha256",
            "-q",
            &hex::encode(q),
        ])
        .output()
        .unwrap()
        .status
        .success()
}

fn evidence_from_json(v: &Value) -> Evidence {
    let b = |v: &Value| STANDARD.decode(v.as_str().unwrap()).unwrap();
    let log = |v: &Value| v.as_str().map(|t| STANDARD.decode(t).unwrap());
    let quote = &v["quote"];
    let mut pcrs = Vec::new();
    for (bank, values) in quote["pcrs"].as_object().unwrap() {
        let values = values
            .as_object()
            .unwrap()
            .iter()
            .map(|(i, v)| (i.parse().unwrap(), b(v)))
            .collect::<std::collections::BTreeMap<u32, Vec<u8>>>();
        pcrs.push((Bank::parse(bank).unwrap(), values.into_iter().collect()));
    }
    Evidence {
        ak_pem: v["attestationKey"]["pem"]
            .as_str()
            .unwrap()
            .replace("\r\n", "\n"),
        attest: b(&quote["attest"]),
        signature: b(&quote["signature"]),
        pcrs,
        firmware_log: log(&quote["firmwareLog"]),
        ima_log: log(&quote["imaLog"]),
    }
}

/// What the firmware measured (PCR, event type, data) and what IMA did, as
/// logs, with the TPM's PCRs extended to match by tpm2-tools.
fn measure_boot(tpm: &mut Swtpm, dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    let firmware = edgeid_attest::firmware_log::build(
        &[Bank::Sha256],
        &[
            (0, 0x8, b"S-CRTM version 1.0"),
            (4, 0x8000_0003, b"\\EFI\\BOOT\\shimx64.efi"),
        ],
    );
    let ima = edgeid_attest::ima_log::build_entry("/usr/bin/module-a", b"v1");
    tpm.extend_as_logged(&firmware, &ima);
    std::fs::write(dir.join("firmware.log"), &firmware).unwrap();
    std::fs::write(dir.join("ima.log"), &ima).unwrap();
    (firmware, ima)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_gets_a_quote_bound_to_itself_that_tpm2_checkquote_accepts() {
    require_tool("tpm2_checkquote", "tpm2-tools");
    let mut tpm = Swtpm::start();
    let dir = edgeid_testkit::temp_dir();
    edgeid_testkit::open_to_others(dir.path());
    let (firmware, ima) = measure_boot(&mut tpm, dir.path());
    let mut keyd_config = KeydFixture::config_in(dir.path());
    keyd_config.backend.default = BackendKind::Tpm;
    let mut tpm_config = tpm.keyd_config();
    tpm_config.event_logs.firmware = dir.path().join("firmware.log");
    tpm_config.event_logs.ima = dir.path().join("ima.log");
    keyd_config.tpm = Some(tpm_config);
    let keyd = KeydFixture::configured(keyd_config, Admins::root_and_self()).await;
    let provisioning = edgeid_identityd::config::ProvisioningConfig::Local(
        edgeid_identityd::config::LocalConfig {
            device_id: "edge-1".into(),
            hub: "localhost".into(),
        },
    );
    let stack = Stack::start_on(keyd, dir.path(), provisioning, None, &["mod-a", "mod-b"]).await;
    let mut config = stack.workload_config(dir.path(), &[("mod-a", 0), ("mod-b", OTHER_UID)]);
    config.server.socket_mode = 0o666;
    let spiffe_socket = dir.path().join("spiffe.sock");
    let spiffe = SpiffeConfig::new(TD, &spiffe_socket);
    config.spiffe = Some(spiffe);
    let workload = WorkloadFixture::configured(config).await;
    let socket = workload.socket();
    let genid = |m: &'static str| {
        let client = stack.identityd.client();
        async move { client.module(m).await.unwrap().generation_id }
    };
    let (genid_a, genid_b) = (genid("mod-a").await, genid("mod-b").await);
    let nonce = b"backend nonce 42";
    let body = json!({ "nonce": STANDARD.encode(nonce) }).to_string();

    // mod-a (this process, uid 0) asks for its own quote.
    let path = format!("/modules/mod-a/genid/{genid_a}/attest?{V}");
    let (code, bytes) = edgeid_testkit::request_as(0, &socket, Method::POST, &path, &body).await;
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&bytes));
    let a: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(a["moduleId"], "mod-a");
    assert_eq!(a["spiffeId"], format!("spiffe://{TD}/edge-1/mod-a"));
    let expected = expected_qualifying("mod-a", nonce);
    assert_eq!(
        STANDARD
            .decode(a["qualifyingData"].as_str().unwrap())
            .unwrap(),
        expected
    );
    let evidence = evidence_from_json(&a);
    let pcrs: Vec<u32> = evidence.pcrs[0].1.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        pcrs,
        vec![0, 1, 2, 3, 4, 5, 6, 7, 10],
        "the default selection"
    );
    let work = dir.path().join("backend");
    assert!(
        checkquote(&work, &evidence, &expected),
        "mod-a's quote for mod-a"
    );
    // The same quote does not pass as mod-b's, nor for another nonce.
    assert!(!checkquote(
        &work,
        &evidence,
        &expected_qualifying("mod-b", nonce)
    ));
    assert!(!checkquote(
        &work,
        &evidence,
        &expected_qualifying("mod-a", b"other nonce!")
    ));
    // The AK is the TPM's: the one keyd shows an administrator.
    let ak = stack.keyd.client().tpm_ak().await.unwrap();
    assert_eq!(
        STANDARD
            .decode(a["attestationKey"]["name"].as_str().unwrap())
            .unwrap(),
        ak.name.0
    );
    assert!(a["endorsementKey"]["pem"]
        .as_str()
        .unwrap()
        .contains("PUBLIC KEY"));
    // The event logs come whole, say so, and replay to the quoted PCRs for
    // a verifier that pins the AK keyd showed.
    assert_eq!(evidence.firmware_log.as_deref(), Some(&firmware[..]));
    assert_eq!(evidence.ima_log.as_deref(), Some(&ima[..]));
    assert_eq!(a["quote"]["firmwareLogComplete"], true);
    assert_eq!(a["quote"]["imaLogComplete"], true);
    assert_eq!(a["quote"]["imaLogOffset"], 0);
    assert!(a["quote"].get("imaLogError").is_none());
    let report = edgeid_attest::verify(
        &evidence,
        &expected,
        edgeid_attest::AkTrust::Pinned(&ak.pem.replace("\r\n", "\n")),
        None,
    );
    assert!(report.ok(), "{:#?}", report.checks);
    for name in ["ak", "pcr sha256:0", "pcr sha256:4", "pcr 10 (ima)"] {
        assert!(
            report.checks.iter().any(|c| c.name == name && c.ok),
            "{name}: {:#?}",
            report.checks
        );
    }
    // From past IMA's end: nothing more, complete, and where it starts.
    let body_past = json!({ "nonce": STANDARD.encode(nonce), "imaOffset": ima.len() + 10 });
    let (code, bytes) =
        edgeid_testkit::request_as(0, &socket, Method::POST, &path, &body_past.to_string()).await;
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&bytes));
    let past: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(past["quote"]["imaLogOffset"], ima.len() + 10);
    assert_eq!(past["quote"]["imaLogComplete"], true);

    // mod-b (uid 4201) gets its own; asking in mod-a's name is refused.
    let path_b = format!("/modules/mod-b/genid/{genid_b}/attest?{V}");
    let (code, bytes) =
        edgeid_testkit::request_as(OTHER_UID, &socket, Method::POST, &path_b, &body).await;
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&bytes));
    let b: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(checkquote(
        &work,
        &evidence_from_json(&b),
        &expected_qualifying("mod-b", nonce)
    ));
    let (code, _) =
        edgeid_testkit::request_as(OTHER_UID, &socket, Method::POST, &path, &body).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "mod-b in mod-a's name");
    // A stranger (no module) is refused before its body is read.
    let (code, _) = edgeid_testkit::request_as(4999, &socket, Method::POST, &path_b, &body).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "a uid that is no module");
    // A stale generation: 404; bad nonces: 400.
    let stale = format!("/modules/mod-a/genid/0000/attest?{V}");
    let (code, _) = edgeid_testkit::request_as(0, &socket, Method::POST, &stale, &body).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    for bad in [
        json!({"nonce": "c2hvcnQ="}),
        json!({"nonce": "!!"}),
        json!({"nonce": STANDARD.encode([1u8; 65])}),
    ] {
        let (code, bytes) =
            edgeid_testkit::request_as(0, &socket, Method::POST, &path, &bad.to_string()).await;
        assert_eq!(
            code,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    let (code, _) = edgeid_testkit::request_as(0, &socket, Method::POST, &path, "").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "no body");

    // The same over gRPC on the SPIFFE socket (the security header required).
    let channel = client::channel(&spiffe_socket.display().to_string())
        .await
        .unwrap();
    let mut bare = ModuleAttestationClient::new(channel.clone());
    let err = bare
        .quote(QuoteRequest {
            nonce: nonce.to_vec(),
            ima_offset: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "no security header"
    );
    let mut grpc =
        ModuleAttestationClient::with_interceptor(channel, |mut req: tonic::Request<()>| {
            req.metadata_mut()
                .insert("workload.spiffe.io", "true".parse().unwrap());
            Ok(req)
        });
    let q = grpc
        .quote(QuoteRequest {
            nonce: nonce.to_vec(),
            ima_offset: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(q.module_id, "mod-a");
    assert_eq!(q.qualifying_data, expected);
    assert_eq!(q.firmware_log, firmware);
    assert_eq!(q.ima_log, ima);
    assert!(q.firmware_log_complete && q.ima_log_complete && q.ima_log_offset == 0);
    assert!(q.firmware_log_error.is_empty() && q.ima_log_error.is_empty());
    let grpc_evidence = Evidence {
        ak_pem: q.ak_pem.replace("\r\n", "\n"),
        attest: q.attest,
        signature: q.signature,
        pcrs: vec![(
            Bank::Sha256,
            q.pcrs.iter().map(|p| (p.index, p.value.clone())).collect(),
        )],
        firmware_log: None,
        ima_log: None,
    };
    assert!(
        checkquote(&work, &grpc_evidence, &expected),
        "the gRPC quote"
    );
    let err = grpc
        .quote(QuoteRequest {
            nonce: b"short".to_vec(),
            ima_offset: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // The SPIFFE Workload API on the same socket still answers.
    let mut spiffe = client::client(
        client::channel(&spiffe_socket.display().to_string())
            .await
            .unwrap(),
    );
    let svid = spiffe
        .fetch_x509svid(edgeid_workloadapi::spiffe::proto::X509svidRequest {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        svid.svids[0].spiffe_id,
        format!("spiffe://{TD}/edge-1/mod-a")
    );
}
