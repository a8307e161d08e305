//! A workloadd serving inside the test process.

use edgeid_common::authz::Admins;
use edgeid_workloadapi::WorkloadConfig;

use crate::daemon::{InProcess, Shutdown};

/// An in-process workloadd.
pub type WorkloadFixture = InProcess<WorkloadConfig>;

impl InProcess<WorkloadConfig> {
    /// workloadd with this config, serving once this returns. (It has no
    /// administrators: every caller is a module or nobody.)
    pub async fn configured(config: WorkloadConfig) -> Self {
        let socket = config.socket();
        InProcess::start(
            "workloadd",
            config,
            socket,
            Admins::only(vec![]),
            |c, _, s: Shutdown| {
                Box::pin(async move {
                    edgeid_workloadapi::run(c, s)
                        .await
                        .map_err(|e| e.to_string())
                })
            },
        )
        .await
    }
}
