//! Cloud calls through the `https_proxy` the environment names: DPS and the
//! hub are reached through a CONNECT tunnel. (Its own test binary: the
//! environment is process-wide.)

mod common;

use common::{dps_symmetric, provisioned, random_key, Daemons};
use edgeid_common::authz::Admins;
use edgeid_testkit::cloud::{CloudService, Enrollment};
use edgeid_testkit::proxy::ConnectProxy;
use edgeid_testkit::IdentitydFixture;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provisioning_and_hub_calls_go_through_https_proxy() {
    let proxy = ConnectProxy::start().await;
    // SAFETY: set before any thread of this test binary reads the environment
    // (this binary has this one test).
    unsafe { std::env::set_var("https_proxy", &proxy.url) };
    let daemons = Daemons::start().await;
    let cloud = CloudService::start(None).await;
    let key = random_key();
    cloud.enroll("proxied", Enrollment::SymmetricKey(key.clone()));
    let key_file = daemons.key_file("enrollment.key", &key);
    let mut config = IdentitydFixture::config_in(
        daemons.path(),
        dps_symmetric(&cloud, "proxied", key_file, false),
        Some(&cloud),
    );
    config.cloud.proxy = None; // from the environment
    let identityd = IdentitydFixture::configured(config, Admins::root_and_self()).await;
    let client = identityd.client();
    provisioned(&client).await;
    let after_provisioning = proxy.tunnels();
    assert!(
        after_provisioning >= 2,
        "register and poll went through the proxy ({after_provisioning})"
    );
    client.create_module("m").await.unwrap();
    assert!(
        proxy.tunnels() > after_provisioning,
        "the hub call went through the proxy"
    );
    assert_eq!(cloud.modules_of("proxied"), vec!["m"]);
}
