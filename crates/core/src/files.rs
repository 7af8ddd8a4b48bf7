//! The guest's files: write and read (binary-safe, streamed, size-capped), mkdir, list, stat,
//! remove. Reads are checked against the size the agent announced and the caller's cap.

use kiln_proto::{FileStat, GuestMsg, HostMsg, MAX_CHUNK};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::agent::{unexpected, Agent};
use crate::error::SandboxError;

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io { what: what.to_owned(), source }
}

fn check_path(path: &str) -> Result<(), SandboxError> {
    if !path.starts_with('/') || path.contains('\0') || path.len() > kiln_proto::MAX_PATH {
        return Err(SandboxError::Invalid(format!("guest paths must be absolute: {path:?}")));
    }
    Ok(())
}

impl Agent {
    /// Writes a file from a stream; returns the number of bytes written.
    pub async fn write_file(&self, path: &str, mode: u32, parents: bool, mut data: impl AsyncRead + Unpin) -> Result<u64, SandboxError> {
        check_path(path)?;
        let mut r = self.call(|id| HostMsg::FileWrite { id, path: path.to_owned(), mode, parents }).await?;
        let id = r.id();
        let mut buf = vec![0u8; MAX_CHUNK];
        let mut total = 0u64;
        loop {
            let n = data.read(&mut buf).await.map_err(io_err("read the local file"))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > kiln_proto::DEFAULT_MAX_FILE {
                return Err(SandboxError::Invalid(format!("file exceeds the limit of {} bytes", kiln_proto::DEFAULT_MAX_FILE)));
            }
            self.channel.send(&HostMsg::FileChunk { id, data: buf[..n].to_vec() }).await?;
        }
        self.channel.send(&HostMsg::FileEnd { id }).await?;
        match r.next().await? {
            GuestMsg::Done { .. } => Ok(total),
            other => Err(unexpected(other)),
        }
    }

    /// Writes bytes to a file.
    pub async fn write_bytes(&self, path: &str, mode: u32, bytes: &[u8]) -> Result<(), SandboxError> {
        self.write_file(path, mode, true, bytes).await.map(|_| ())
    }

    /// Streams a file into `out`; refuses files over `max_bytes`. Returns (size, mode).
    pub async fn read_file(&self, path: &str, max_bytes: u64, out: &mut (impl AsyncWrite + Unpin)) -> Result<(u64, u32), SandboxError> {
        check_path(path)?;
        let mut r = self.call(|id| HostMsg::FileRead { id, path: path.to_owned(), max_bytes }).await?;
        let (size, mode) = match r.next().await? {
            GuestMsg::FileInfo { size, mode, .. } if size <= max_bytes => (size, mode),
            GuestMsg::FileInfo { size, .. } => return Err(SandboxError::Protocol(format!("agent announced {size} bytes over the cap {max_bytes}"))),
            other => return Err(unexpected(other)),
        };
        let mut got = 0u64;
        loop {
            match r.next().await? {
                GuestMsg::FileChunk { data, .. } => {
                    got += data.len() as u64;
                    if got > size {
                        return Err(SandboxError::Protocol(format!("agent sent more than the {size} bytes it announced")));
                    }
                    out.write_all(&data).await.map_err(io_err("write the local file"))?;
                }
                GuestMsg::FileEnd { .. } => break,
                other => return Err(unexpected(other)),
            }
        }
        if got != size {
            return Err(SandboxError::Protocol(format!("agent sent {got} of the {size} bytes it announced")));
        }
        out.flush().await.map_err(io_err("write the local file"))?;
        Ok((size, mode))
    }

    /// Reads a whole file into memory.
    pub async fn read_bytes(&self, path: &str, max_bytes: u64) -> Result<Vec<u8>, SandboxError> {
        let mut v = Vec::new();
        self.read_file(path, max_bytes, &mut v).await?;
        Ok(v)
    }

    /// Creates a directory.
    pub async fn mkdir(&self, path: &str, mode: u32, parents: bool) -> Result<(), SandboxError> {
        check_path(path)?;
        let mut r = self.call(|id| HostMsg::Mkdir { id, path: path.to_owned(), mode, parents }).await?;
        match r.next().await? {
            GuestMsg::Done { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Lists a directory (at most `max_entries`).
    pub async fn list(&self, path: &str, max_entries: usize) -> Result<Vec<FileStat>, SandboxError> {
        check_path(path)?;
        let mut r = self.call(|id| HostMsg::List { id, path: path.to_owned() }).await?;
        let mut all = Vec::new();
        loop {
            match r.next().await? {
                GuestMsg::Entries { entries, last, .. } => {
                    all.extend(entries);
                    if all.len() > max_entries {
                        return Err(SandboxError::Invalid(format!("{path} has more than {max_entries} entries")));
                    }
                    if last {
                        return Ok(all);
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Metadata of a path.
    pub async fn stat(&self, path: &str) -> Result<FileStat, SandboxError> {
        check_path(path)?;
        let mut r = self.call(|id| HostMsg::Stat { id, path: path.to_owned() }).await?;
        match r.next().await? {
            GuestMsg::Stat { stat, .. } => Ok(stat),
            other => Err(unexpected(other)),
        }
    }

    /// Removes a file or (with `recursive`) a directory tree.
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), SandboxError> {
        check_path(path)?;
        let mut r = self.call(|id| HostMsg::Remove { id, path: path.to_owned(), recursive }).await?;
        match r.next().await? {
            GuestMsg::Done { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}
