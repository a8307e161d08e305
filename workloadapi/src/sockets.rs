//! Per-module sockets. The orchestrator asks for one per module
//! (`POST /v1/modules/{name}/socket`) and mounts it into that module's
//! container; whoever connects to it *is* that module, whatever its uid. The
//! list is kept in `sockets_dir/bound.json` so a restart serves them again.
//! Binding is here; what answers on a socket is the server's, handed in as
//! a [`ServeModule`].

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

/// `POST /v1/modules/{name}/socket`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindRequest {
    /// Make the socket this uid's, mode 0600; without it, mode 0666 (access is
    /// then whatever mounting it into the container allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
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
}

struct Bound {
    path: PathBuf,
    uid: Option<u32>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Serves the workload API as `module` on the listener until the receiver
/// fires (the front that does it is the server's; sockets only bind).
pub type ServeModule =
    Box<dyn Fn(String, Listener, oneshot::Receiver<()>) -> JoinHandle<()> + Send + Sync>;

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
        // Only modules identityd knows get a socket.
        self.workload.fetch_identity(name).await?;
        let path = self.bind(name, req.uid)?;
        self.save()?;
        Ok(BoundSocket {
            module: name.to_owned(),
            path,
        })
    }

    fn bind(&self, name: &str, uid: Option<u32>) -> Result<PathBuf, Error> {
        let mut bound = lock(&self.bound);
        if let Some(b) = bound.get(name) {
            if b.uid == uid {
                return Ok(b.path.clone());
            }
            return Err(Error::BadRequest(format!(
                "module '{name}' already has a socket for another uid; delete it first"
            )));
        }
        let dir = &self.workload.config.sockets_dir;
        edgeid_common::fs::ensure_dir(dir, 0o755)
            .map_err(|e| Error::Internal(format!("cannot make {}: {e}", dir.display())))?;
        let path = self.socket_path(name);
        let _ = std::fs::remove_file(&path);
        let listener = Listener::bind(&path, if uid.is_some() { 0o600 } else { 0o666 })
            .map_err(|e| Error::Internal(format!("cannot bind {}: {e}", path.display())))?;
        if let Some(uid) = uid {
            std::os::unix::fs::chown(&path, Some(uid), None).map_err(|e| {
                Error::Internal(format!("cannot give {} to uid {uid}: {e}", path.display()))
            })?;
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let task = (self.serve)(name.to_owned(), listener, stopped);
        tracing::info!(module = %name, socket = %path.display(), "serving a module's socket");
        bound.insert(
            name.to_owned(),
            Bound {
                path: path.clone(),
                uid,
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
                uid: b.uid,
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
            if let Err(e) = self.bind(&s.module, s.uid) {
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
