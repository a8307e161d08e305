//! Per-module sockets. The orchestrator asks for one per module
//! (`POST /v1/modules/{name}/socket`) for the uid or group the module runs
//! as, and mounts it into that module's container (or a host service's
//! namespace). The socket is that module, for that uid or group alone:
//! `sockets_dir` is 0700 and workloadd's, so nobody reaches a socket but
//! through the mount the orchestrator made; the socket is 0600 and the
//! uid's (or 0660 and the group's), so only it may connect; and every
//! request on it is refused unless the kernel says the caller is that uid
//! or group. The list is kept in `sockets_dir/bound.json` so a restart
//! serves them again. Binding is here; what answers on a socket is the
//! server's, handed in as a [`ServeModule`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use edgeid_common::listener::Listener;
use edgeid_common::sync::lock;
use edgeid_common::Caller;
use edgeid_identityd::names;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::workload::Workload;

/// `POST /v1/modules/{name}/socket`: at least one of `uid` and `gid`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindRequest {
    /// The uid the module runs as: the socket is its, mode 0600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The group the module runs as (its effective gid): the socket is
    /// the group's, mode 0660.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// Who a module's socket is for: a uid, a group, or either of both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The module's uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The module's group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

impl Owner {
    /// The owner a bind asks for; a socket for nobody in particular is refused.
    pub fn of(req: &BindRequest) -> Result<Self, Error> {
        if req.uid.is_none() && req.gid.is_none() {
            return Err(Error::BadRequest(
                "give the uid (or gid) the module runs as: a module's socket is reachable by that uid or group alone".into(),
            ));
        }
        Ok(Self {
            uid: req.uid,
            gid: req.gid,
        })
    }

    /// The socket file's mode.
    fn mode(&self) -> u32 {
        if self.gid.is_some() {
            0o660
        } else {
            0o600
        }
    }

    /// Lets the caller in if the kernel says it is the uid or in the group
    /// (its effective gid, as `SO_PEERCRED` reports it); else the 403.
    pub fn admit(&self, module: &str, caller: &Caller) -> Result<(), Error> {
        if self.uid == Some(caller.uid) || self.gid == Some(caller.gid) {
            return Ok(());
        }
        tracing::warn!(uid = caller.uid, gid = caller.gid, pid = caller.pid, module = %module, "refused: not the uid or group of this module's socket");
        let mut for_whom = Vec::new();
        if let Some(uid) = self.uid {
            for_whom.push(format!("uid {uid}"));
        }
        if let Some(gid) = self.gid {
            for_whom.push(format!("gid {gid}"));
        }
        Err(Error::Forbidden(format!(
            "this socket is module '{module}''s, for {}; uid {} (gid {}) is not",
            for_whom.join(" or "),
            caller.uid,
            caller.gid
        )))
    }
}

/// The answer: where the module's socket is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BoundSocket {
    /// The module.
    pub module: String,
    /// The socket's path.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    module: String,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    gid: Option<u32>,
}

struct Bound {
    path: PathBuf,
    owner: Owner,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Serves the workload API as `module`, to its [`Owner`] alone, on the
/// listener until the receiver fires (the front that does it is the
/// server's; sockets only bind).
pub type ServeModule =
    Box<dyn Fn(String, Owner, Listener, oneshot::Receiver<()>) -> JoinHandle<()> + Send + Sync>;

/// The per-module sockets being served.
pub struct ModuleSockets {
    workload: Arc<Workload>,
    serve: ServeModule,
    bound: Mutex<HashMap<String, Bound>>,
}

impl ModuleSockets {
    /// The per-module sockets of `workload`; `serve` serves the workload API
    /// as a module on a listener until told to stop.
    pub fn new(workload: Arc<Workload>, serve: ServeModule) -> Arc<Self> {
        Arc::new(Self {
            workload,
            serve,
            bound: Mutex::new(HashMap::new()),
        })
    }

    fn socket_path(&self, module: &str) -> PathBuf {
        let file = names::module_resource_id(module).replace('/', "_");
        self.workload
            .config
            .sockets_dir
            .join(format!("{file}.sock"))
    }

    /// `POST /v1/modules/{name}/socket`: serves a socket that is `name`.
    pub async fn bind_socket(
        &self,
        caller: &Caller,
        name: &str,
        req: BindRequest,
    ) -> Result<BoundSocket, Error> {
        self.workload.authorize_orchestrator(caller)?;
        names::check_module_id(name)
            .map_err(|e| Error::BadRequest(format!("module name '{}': {e}", names::shown(name))))?;
        let owner = Owner::of(&req)?;
        // Only modules identityd knows get a socket.
        self.workload.fetch_identity(name).await?;
        let path = self.bind(name, owner)?;
        self.save()?;
        Ok(BoundSocket {
            module: name.to_owned(),
            path,
        })
    }

    fn bind(&self, name: &str, owner: Owner) -> Result<PathBuf, Error> {
        let mut bound = lock(&self.bound);
        if let Some(b) = bound.get(name) {
            if b.owner == owner {
                return Ok(b.path.clone());
            }
            return Err(Error::BadRequest(format!(
                "module '{name}' already has a socket for another uid or group; delete it first"
            )));
        }
        // 0700 and ours: a socket is reached only through the mount the
        // orchestrator makes of it, never by walking here.
        let dir = &self.workload.config.sockets_dir;
        edgeid_common::fs::ensure_private_dir(dir)
            .map_err(|e| Error::Internal(format!("cannot make {}: {e}", dir.display())))?;
        let path = self.socket_path(name);
        let _ = std::fs::remove_file(&path);
        // Bound 0600 and ours; then given to the module (lchown: the path
        // is the socket just made, never followed).
        let listener = Listener::bind(&path, 0o600)
            .map_err(|e| Error::Internal(format!("cannot bind {}: {e}", path.display())))?;
        std::os::unix::fs::lchown(&path, owner.uid, owner.gid).map_err(|e| {
            Error::Internal(format!(
                "cannot give {} to the module's uid or group: {e}",
                path.display()
            ))
        })?;
        std::fs::set_permissions(
            &path,
            std::os::unix::fs::PermissionsExt::from_mode(owner.mode()),
        )
        .map_err(|e| Error::Internal(format!("cannot set the mode of {}: {e}", path.display())))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = (self.serve)(name.to_owned(), owner, listener, stopped);
        tracing::info!(module = %name, socket = %path.display(), uid = owner.uid, gid = owner.gid, "serving a module's socket");
        bound.insert(
            name.to_owned(),
            Bound {
                path: path.clone(),
                owner,
                stop,
                task,
            },
        );
        Ok(path)
    }

    /// `DELETE /v1/modules/{name}/socket`: stops serving it and removes it.
    pub async fn unbind_socket(&self, caller: &Caller, name: &str) -> Result<(), Error> {
        self.workload.authorize_orchestrator(caller)?;
        let Some(b) = lock(&self.bound).remove(name) else {
            return Err(Error::NotFound(format!(
                "module '{}' has no socket",
                names::shown(name)
            )));
        };
        self.save()?;
        let _ = b.stop.send(());
        let _ = b.task.await;
        Ok(())
    }

    fn saved_file(&self) -> PathBuf {
        self.workload.config.sockets_dir.join("bound.json")
    }

    fn save(&self) -> Result<(), Error> {
        let saved: Vec<Saved> = lock(&self.bound)
            .iter()
            .map(|(module, b)| Saved {
                module: module.clone(),
                uid: b.owner.uid,
                gid: b.owner.gid,
            })
            .collect();
        let json = serde_json::to_vec_pretty(&saved).map_err(|e| Error::Internal(e.to_string()))?;
        let file = self.saved_file();
        edgeid_common::fs::write_atomic(&file, &json, 0o600)
            .map_err(|e| Error::Internal(format!("cannot write {}: {e}", file.display())))
    }

    /// Serves again the sockets served before a restart.
    pub fn restore(&self) {
        let file = self.saved_file();
        let saved: Vec<Saved> = match std::fs::read(&file) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "ignoring a damaged list of module sockets");
                    return;
                }
            },
            Err(_) => return,
        };
        for s in saved {
            let owner = match Owner::of(&BindRequest {
                uid: s.uid,
                gid: s.gid,
            }) {
                Ok(o) => o,
                Err(_) => {
                    // Bound by an older edgeid for whoever connects: no more.
                    tracing::warn!(module = %s.module, "not serving again a module socket bound for no uid or group: bind it again with the module's uid or gid");
                    continue;
                }
            };
            if let Err(e) = self.bind(&s.module, owner) {
                tracing::warn!(module = %s.module, error = %e, "cannot serve a module's socket again");
            }
        }
    }

    /// Stops every module socket (workloadd is stopping).
    pub async fn close(&self) {
        let all: Vec<Bound> = lock(&self.bound).drain().map(|(_, b)| b).collect();
        for b in all {
            let _ = b.stop.send(());
            let _ = b.task.await;
        }
    }
}
