//! Serving the proxy on a TCP listener: for tests and debugging (sandboxes reach the proxy
//! through their tunnel, not through TCP).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::{serve_connection, ProxyContext};

/// Binds `addr` and serves [`serve_connection`] on every accepted connection. Returns the bound
/// address (useful with port 0) and the accept loop's task; aborting the task also aborts the
/// connections it is serving.
pub async fn listen_tcp(addr: SocketAddr, ctx: Arc<ProxyContext>) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, serve_listener(listener, ctx)))
}

/// Serves [`serve_connection`] on every connection `listener` accepts, until the returned task
/// is aborted (which also aborts the connections being served).
pub fn serve_listener(listener: TcpListener, ctx: Arc<ProxyContext>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let ctx = ctx.clone();
                        conns.spawn(async move {
                            serve_connection(stream, &ctx).await;
                        });
                    }
                    // Out of file descriptors and the like: wait a little rather than spin.
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    })
}
