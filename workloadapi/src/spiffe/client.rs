//! A SPIFFE Workload API client over a Unix socket (feature `client`): what
//! the tests and `edgeid-bench` use, and what a Rust module can use too.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Status};

use super::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;

/// Adds the security header every request needs.
pub type WithHeader = fn(Request<()>) -> Result<Request<()>, Status>;

/// A client that sends the security header.
pub type Client = SpiffeWorkloadApiClient<InterceptedService<Channel, WithHeader>>;

fn security_header(mut req: Request<()>) -> Result<Request<()>, Status> {
    req.metadata_mut()
        .insert("workload.spiffe.io", MetadataValue::from_static("true"));
    Ok(req)
}

/// A channel to the socket (`unix://` prefix optional, as in `SPIFFE_ENDPOINT_SOCKET`),
/// connecting again whenever it must.
pub async fn channel(socket: &str) -> Result<Channel, tonic::transport::Error> {
    let path = PathBuf::from(socket.strip_prefix("unix://").unwrap_or(socket));
    endpoint()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}

/// A channel over one already connected stream (made, say, by a process of
/// another uid); it cannot reconnect.
pub async fn channel_over(
    stream: std::os::unix::net::UnixStream,
) -> Result<Channel, tonic::transport::Error> {
    let once = Arc::new(Mutex::new(Some(stream)));
    endpoint()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let taken = edgeid_common::sync::lock(&once).take();
            async move {
                let stream = taken.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotConnected, "the one connection is used up")
                })?;
                stream.set_nonblocking(true)?;
                UnixStream::from_std(stream).map(TokioIo::new)
            }
        }))
        .await
}

fn endpoint() -> Endpoint {
    // The authority is not used on a Unix socket.
    Endpoint::from_static("http://localhost")
}

/// A client on `channel` that sends the security header.
pub fn client(channel: Channel) -> Client {
    SpiffeWorkloadApiClient::with_interceptor(channel, security_header as WithHeader)
}

/// A client for the socket at `socket` (`unix://` prefix optional).
pub async fn connect(socket: &str) -> Result<Client, tonic::transport::Error> {
    Ok(client(channel(socket).await?))
}

/// `path` as the `SPIFFE_ENDPOINT_SOCKET` value.
pub fn endpoint_address(path: &Path) -> String {
    format!("unix://{}", path.display())
}
