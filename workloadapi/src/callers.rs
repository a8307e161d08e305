//! Who is calling workloadd: the module a caller is (by its socket, or
//! by its uid), and whether it is somebody here at all, or the orchestrator.

use edgeid_common::Caller;

use crate::error::Error;
use crate::workload::{Who, Workload};

impl Workload {
    /// The module the caller is: the one its socket is bound to, else the
    /// one its uid is mapped to; 403 if neither.
    pub fn module_name<'w>(&'w self, who: &Who<'w>) -> Result<&'w str, Error> {
        let caller = who.caller;
        who.bound
            .or_else(|| self.by_uid.get(&caller.uid).map(String::as_str))
            .ok_or_else(|| {
                tracing::warn!(
                    uid = caller.uid,
                    pid = caller.pid,
                    "refused: uid is no module"
                );
                Error::Forbidden(format!("uid {} is not mapped to a module", caller.uid))
            })
    }

    /// Whether the caller is somebody on the main socket (a mapped module or
    /// the orchestrator): asked before a request's body is read, and by
    /// what only such a caller may see.
    pub fn admits(&self, caller: &Caller) -> Result<(), Error> {
        if self.by_uid.contains_key(&caller.uid) || self.is_orchestrator(caller) {
            return Ok(());
        }
        tracing::warn!(
            uid = caller.uid,
            pid = caller.pid,
            "refused: neither a module nor the orchestrator"
        );
        Err(Error::Forbidden(format!(
            "uid {} is neither a module nor the orchestrator",
            caller.uid
        )))
    }

    fn is_orchestrator(&self, caller: &Caller) -> bool {
        caller.uid == 0
            || caller.uid == edgeid_common::current_uid()
            || self.config.orchestrator_uids.contains(&caller.uid)
    }

    /// Whether the caller is the orchestrator: root, workloadd's own uid,
    /// or one of `orchestrator_uids`.
    pub(crate) fn authorize_orchestrator(&self, caller: &Caller) -> Result<(), Error> {
        if self.is_orchestrator(caller) {
            return Ok(());
        }
        tracing::warn!(
            uid = caller.uid,
            pid = caller.pid,
            "refused: not the orchestrator"
        );
        Err(Error::Forbidden(format!(
            "uid {} may not manage module sockets (orchestrator_uids)",
            caller.uid
        )))
    }
}
