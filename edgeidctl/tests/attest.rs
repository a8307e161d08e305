//! `edgeidctl attest quote` on a device (keyd on swtpm, PCRs extended by
//! tpm2-tools as firmware and IMA would, with event logs to match) and
//! `edgeidctl attest verify` anywhere. tpm2_checkquote checks the same
//! files; every tampering is refused with the check that caught it.

use std::path::Path;
use std::process::{Command, Output};

use edgeid_attest::{firmware_log, ima_log, Bank};
use edgeid_common::authz::Admins;
use edgeid_keyd::backend::BackendKind;
use edgeid_testkit::{require_tool, KeydFixture, Swtpm};

const NONCE: &str = "00112233445566778899aabbccddeeff";

fn edgeidctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgeidctl"))
        .args(args)
        .env_remove("EDGEID_RUN_DIR")
        .output()
        .expect("run edgeidctl")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `attest verify` of `dir`; with `pin`, the AK pinned to the one the test
/// took from keyd itself (`proved-ak.pem` beside `dir`).
fn verify_with(
    dir: &Path,
    nonce: &str,
    policy: Option<&Path>,
    pin: bool,
    extra: &[&str],
) -> Output {
    let proved = dir
        .parent()
        .unwrap()
        .join("proved-ak.pem")
        .display()
        .to_string();
    let dir = dir.display().to_string();
    let mut args = vec!["attest", "verify", "--nonce", nonce, dir.as_str()];
    let policy = policy.map(|p| p.display().to_string());
    if let Some(p) = &policy {
        args.extend(["--policy", p.as_str()]);
    }
    if pin {
        args.extend(["--ak", proved.as_str()]);
    }
    args.extend(extra);
    edgeidctl(&args)
}

fn verify(dir: &Path, nonce: &str, policy: Option<&Path>) -> Output {
    verify_with(dir, nonce, policy, true, &[])
}

/// `message` signed by `key` as a TPM would marshal it: TPMT_SIGNATURE
/// with TPM_ALG_ECDSA, TPM_ALG_SHA256, then r and s as TPM2B values.
fn tpm_ecdsa_signature(key: &rcgen::KeyPair, message: &[u8]) -> Vec<u8> {
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der()).unwrap();
    assert!(!pair.public_key().as_ref().is_empty());
    let rs = pair
        .sign(&aws_lc_rs::rand::SystemRandom::new(), message)
        .unwrap();
    let (r, s) = rs.as_ref().split_at(32);
    let mut out = Vec::new();
    out.extend_from_slice(&0x0018u16.to_be_bytes());
    out.extend_from_slice(&0x000bu16.to_be_bytes());
    for v in [r, s] {
        out.extend_from_slice(&32u16.to_be_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// The firmware's events: (PCR, type, data), measured as their SHA-256.
const FIRMWARE: &[(u32, u32, &[u8])] = &[
    (0, 0x8, b"S-CRTM version 1.0"),
    (0, 0x1, b"POST code"),
    (4, 0x8000_0003, b"\\EFI\\BOOT\\shimx64.efi"),
    (7, 0x8000_00e0, b"SecureBoot=1"),
];

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quote_from_the_device_verifies_anywhere_and_tampering_is_named() {
    require_tool("tpm2_checkquote", "tpm2-tools");
    let mut tpm = Swtpm::start();
    let dir = edgeid_testkit::temp_dir();
    // What the firmware and IMA measured, extended into the TPM by tpm2-tools.
    let firmware = firmware_log::build(&[Bank::Sha256], FIRMWARE);
    let mut ima = ima_log::build_entry("/usr/bin/edge-agent", b"agent v1");
    ima.extend(ima_log::build_entry("/etc/edgeid/config.toml", b"[keyd]"));
    tpm.extend_as_logged(&firmware, &ima);
    std::fs::write(dir.path().join("firmware.log"), &firmware).unwrap();
    std::fs::write(dir.path().join("ima.log"), &ima).unwrap();

    let mut config = KeydFixture::config_in(dir.path());
    config.backend.default = BackendKind::Tpm;
    let mut tpm_config = tpm.keyd_config();
    tpm_config.event_logs.firmware = dir.path().join("firmware.log");
    tpm_config.event_logs.ima = dir.path().join("ima.log");
    config.tpm = Some(tpm_config);
    let _keyd = KeydFixture::configured(config, Admins::root_and_self()).await;

    let run_dir = dir.path().display().to_string();
    let evidence = dir.path().join("evidence");
    let out_dir = evidence.display().to_string();
    // `attest quote` of `pcrs` into `out`, which must succeed; its summary.
    let quote_into = |pcrs: &str, out: &Path| {
        let quoted = edgeidctl(&[
            "attest",
            "--run-dir",
            &run_dir,
            "quote",
            "--nonce",
            NONCE,
            "--pcrs",
            pcrs,
            "--out",
            &out.display().to_string(),
        ]);
        assert!(quoted.status.success(), "{}", text(&quoted));
        text(&quoted)
    };
    let summary = quote_into("sha256:0,1,2,3,4,5,6,7,10", &evidence);
    assert!(
        summary.contains("quoted sha256:0,1,2,3,4,5,6,7,10"),
        "{summary}"
    );
    assert_eq!(
        files_in(&evidence),
        [
            "ak.pem",
            "eventlog",
            "eventlog.ima",
            "quote.msg",
            "quote.pcrs",
            "quote.sig"
        ]
    );
    assert_eq!(std::fs::read(evidence.join("eventlog")).unwrap(), firmware);
    // The operator's AK, as proved to be in this TPM (keyd's attestation
    // tests prove it with tpm2_makecredential): pinned for every verify.
    std::fs::copy(evidence.join("ak.pem"), dir.path().join("proved-ak.pem")).unwrap();

    // tpm2-tools, with nothing of edgeid's, accepts the files.
    let file = |name: &str| evidence.join(name).display().to_string();
    let checked = Command::new("tpm2_checkquote")
        .args([
            "-u",
            &file("ak.pem"),
            "-m",
            &file("quote.msg"),
            "-s",
            &file("quote.sig"),
        ])
        .args(["-f", &file("quote.pcrs"), "-g", "sha256", "-q", NONCE])
        .output()
        .unwrap();
    assert!(checked.status.success(), "{}", text(&checked));

    // Our verifier: every check passes, the logs replay.
    let ok = verify(&evidence, NONCE, None);
    assert!(ok.status.success(), "{}", text(&ok));
    let report = text(&ok);
    for line in [
        "ok   ak",
        "ok   signature",
        "ok   nonce",
        "ok   pcr digest",
        "ok   pcr sha256:0",
        "ok   pcr 10 (ima)",
    ] {
        assert!(report.contains(line), "{line}: {report}");
    }
    assert!(report.contains("the first 2 of 2 IMA entries"), "{report}");

    // A policy that holds: PCR 0's value, the shim's event, the agent's digest.
    let mut pcr0 = vec![0; 32];
    for (pcr, _, data) in FIRMWARE {
        if *pcr == 0 {
            Bank::Sha256.extend(&mut pcr0, &Bank::Sha256.hash(data));
        }
    }
    let agent = format!("sha256:{}", hex::encode(Bank::Sha256.hash(b"agent v1")));
    let policy = dir.path().join("policy.toml");
    let write_policy = |agent_digest: &str| {
        std::fs::write(
            &policy,
            format!(
                "[pcrs.sha256]\n0 = \"{}\"\n\n[[events]]\npcr = 4\nbank = \"sha256\"\ndigest = \"{}\"\nname = \"shim\"\n\n[[files]]\npath = \"/usr/bin/edge-agent\"\ndigest = \"{agent_digest}\"\n",
                hex::encode(&pcr0),
                hex::encode(Bank::Sha256.hash(FIRMWARE[2].2)),
            ),
        )
        .unwrap();
    };
    write_policy(&agent);
    let held = verify(&evidence, NONCE, Some(&policy));
    assert!(held.status.success(), "{}", text(&held));
    // Another agent build than the policy allows: that file is named.
    write_policy(&format!(
        "sha256:{}",
        hex::encode(Bank::Sha256.hash(b"agent v2"))
    ));
    let broken = verify(&evidence, NONCE, Some(&policy));
    assert!(!broken.status.success());
    assert!(
        text(&broken).contains("FAIL policy file /usr/bin/edge-agent"),
        "{}",
        text(&broken)
    );

    // IMA measured more after the quote: the quote covers the first two.
    let mut longer = ima.clone();
    longer.extend(ima_log::build_entry("/usr/bin/late", b"late"));
    std::fs::write(evidence.join("eventlog.ima"), &longer).unwrap();
    let later = verify(&evidence, NONCE, None);
    assert!(later.status.success(), "{}", text(&later));
    assert!(
        text(&later).contains("the first 2 of 3 IMA entries"),
        "{}",
        text(&later)
    );

    // Each tampering, and the check that names it.
    let tamper = |name: &str, change: &dyn Fn(&mut Vec<u8>), nonce: &str, expect: &str| {
        let copy = dir
            .path()
            .join(format!("tampered-{}", name.replace('.', "-")));
        std::fs::create_dir_all(&copy).unwrap();
        for f in files_in(&evidence) {
            std::fs::copy(evidence.join(&f), copy.join(&f)).unwrap();
        }
        let mut bytes = std::fs::read(copy.join(name)).unwrap();
        change(&mut bytes);
        std::fs::write(copy.join(name), bytes).unwrap();
        let out = verify(&copy, nonce, None);
        assert!(!out.status.success(), "{name}: passed\n{}", text(&out));
        assert!(
            text(&out).contains(expect),
            "{name}: {expect}\n{}",
            text(&out)
        );
    };
    let same = |_: &mut Vec<u8>| {};
    tamper(
        "quote.msg",
        &same,
        "ffeeddccbbaa99887766554433221100",
        "FAIL nonce",
    );
    // A firmware event changed: PCR 4's replay no longer matches.
    let shim = b"\\EFI\\BOOT\\shimx64.efi";
    let evil = firmware_log::build(
        &[Bank::Sha256],
        &[
            FIRMWARE[0],
            FIRMWARE[1],
            (4, 0x8000_0003, b"\\EFI\\BOOT\\evil64.efi"),
            FIRMWARE[3],
        ],
    );
    assert_ne!(&shim[..], b"\\EFI\\BOOT\\evil64.efi");
    tamper(
        "eventlog",
        &|b| *b = evil.clone(),
        NONCE,
        "FAIL pcr sha256:4",
    );
    tamper("eventlog.ima", &|b| b[50] ^= 1, NONCE, "FAIL pcr 10 (ima)");
    tamper(
        "quote.msg",
        &|b| *b.last_mut().unwrap() ^= 1,
        NONCE,
        "FAIL signature",
    );
    tamper("quote.pcrs", &|b| b[0x8e] ^= 1, NONCE, "FAIL pcr digest");
    tamper("quote.sig", &|b| b[10] ^= 1, NONCE, "FAIL signature");
    // Another key than the AK.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let other_pem = other.public_key_pem();
    tamper(
        "ak.pem",
        &|b| *b = other_pem.as_bytes().to_vec(),
        NONCE,
        "FAIL ak",
    );

    // A forgery: a quote signed by a key of the forger's own, which is the
    // evidence's ak.pem. Its signature holds over it, so only the pinned
    // AK tells it apart (before the AK was pinned, this passed).
    let forged = dir.path().join("forged");
    std::fs::create_dir_all(&forged).unwrap();
    for f in files_in(&evidence) {
        std::fs::copy(evidence.join(&f), forged.join(&f)).unwrap();
    }
    let msg = std::fs::read(forged.join("quote.msg")).unwrap();
    std::fs::write(forged.join("quote.sig"), tpm_ecdsa_signature(&other, &msg)).unwrap();
    std::fs::write(forged.join("ak.pem"), &other_pem).unwrap();
    let taken = verify_with(&forged, NONCE, None, false, &["--trust-evidence-ak"]);
    assert!(
        text(&taken).contains("ok   signature"),
        "the forgery is self-consistent: {}",
        text(&taken)
    );
    for (out, expect) in [
        (verify(&forged, NONCE, None), "FAIL ak"),
        (verify(&forged, NONCE, None), "FAIL signature"),
        (verify_with(&forged, NONCE, None, false, &[]), "FAIL ak"),
    ] {
        assert!(!out.status.success(), "forgery passed: {}", text(&out));
        assert!(text(&out).contains(expect), "{expect}: {}", text(&out));
    }
    // Nothing pinned: refused, saying how to pin.
    let unpinned = verify_with(&evidence, NONCE, None, false, &[]);
    assert!(!unpinned.status.success());
    assert!(
        text(&unpinned).contains("no attestation key is pinned"),
        "{}",
        text(&unpinned)
    );
    // The policy's `ak` pins it as --ak does.
    let pinned_policy = dir.path().join("ak-policy.toml");
    std::fs::write(
        &pinned_policy,
        format!(
            "ak = \"\"\"\n{}\"\"\"\n",
            std::fs::read_to_string(evidence.join("ak.pem")).unwrap()
        ),
    )
    .unwrap();
    let by_policy = verify_with(&evidence, NONCE, Some(&pinned_policy), false, &[]);
    assert!(by_policy.status.success(), "{}", text(&by_policy));
    let forged_by_policy = verify_with(&forged, NONCE, Some(&pinned_policy), false, &[]);
    assert!(
        !forged_by_policy.status.success() && text(&forged_by_policy).contains("FAIL ak"),
        "{}",
        text(&forged_by_policy)
    );

    // A policy that does not hold: each differing PCR and missing event named.
    std::fs::write(
        &policy,
        format!(
            "[pcrs.sha256]\n0 = \"{}\"\n\n[[events]]\npcr = 4\nbank = \"sha256\"\ndigest = \"{}\"\nname = \"grub\"\n",
            hex::encode([0x5a; 32]),
            hex::encode(Bank::Sha256.hash(b"grubx64.efi")),
        ),
    )
    .unwrap();
    let differs = verify(&evidence, NONCE, Some(&policy));
    assert!(!differs.status.success());
    for line in [
        "FAIL policy pcr sha256:0",
        "the policy expects 5a5a",
        "FAIL event grub",
    ] {
        assert!(text(&differs).contains(line), "{line}: {}", text(&differs));
    }

    // A quote that leaves PCR 4 out does not vouch for the log's PCR 4
    // events: a required one there is not taken on the log's word (before,
    // any event anywhere in the log counted).
    let narrow = dir.path().join("evidence-narrow");
    quote_into("sha256:0,10", &narrow);
    write_policy(&agent);
    let unvouched = verify(&narrow, NONCE, Some(&policy));
    assert!(!unvouched.status.success());
    assert!(
        text(&unvouched).contains("FAIL event shim")
            && text(&unvouched).contains("does not vouch for it"),
        "{}",
        text(&unvouched)
    );

    // The SHA-1 bank: IMA extends its stored template digest, so a path
    // rewritten under an unchanged digest replays the same; the verifier
    // hashes the data (before, this passed). The firmware log has no SHA-1
    // digests, so a SHA-1 firmware PCR cannot be replayed: said so.
    let sha1 = dir.path().join("evidence-sha1");
    quote_into("sha1:0,10", &sha1);
    let plain = verify(&sha1, NONCE, None);
    assert!(
        text(&plain).contains("ok   pcr 10 (ima)")
            && text(&plain).contains("FAIL firmware log sha1"),
        "{}",
        text(&plain)
    );
    let mut rewritten = std::fs::read(sha1.join("eventlog.ima")).unwrap();
    let at = rewritten
        .windows(b"edge-agent".len())
        .position(|w| w == b"edge-agent")
        .unwrap();
    rewritten[at..at + b"edge-agent".len()].copy_from_slice(b"evil-agent");
    std::fs::write(sha1.join("eventlog.ima"), &rewritten).unwrap();
    let caught = verify(&sha1, NONCE, None);
    assert!(
        text(&caught).contains("FAIL pcr 10 (ima)")
            && text(&caught).contains("not the SHA-1 of its data"),
        "{}",
        text(&caught)
    );

    // Bad input: a clear message, exit non-zero, no panic.
    let bad = edgeidctl(&[
        "attest",
        "--run-dir",
        &run_dir,
        "quote",
        "--nonce",
        "abc",
        "--out",
        &out_dir,
    ]);
    assert!(
        !bad.status.success() && text(&bad).contains("not hex"),
        "{}",
        text(&bad)
    );
    let bad = edgeidctl(&[
        "attest",
        "--run-dir",
        &run_dir,
        "quote",
        "--nonce",
        NONCE,
        "--pcrs",
        "md5:0",
        "--out",
        &out_dir,
    ]);
    assert!(
        !bad.status.success() && text(&bad).contains("unknown bank"),
        "{}",
        text(&bad)
    );
    let missing = verify(&dir.path().join("nowhere"), NONCE, None);
    assert!(
        !missing.status.success() && text(&missing).contains("cannot read"),
        "{}",
        text(&missing)
    );
    std::fs::write(&policy, "[pcrs.sha256]\n0 = \"zz\"\n").unwrap();
    let bad_policy = verify(&evidence, NONCE, Some(&policy));
    assert!(
        !bad_policy.status.success() && text(&bad_policy).contains("pcrs.sha256.0"),
        "{}",
        text(&bad_policy)
    );
}
