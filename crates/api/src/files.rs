//! Files in a sandbox: what list and stat answer.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::Schema;

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
    /// A symbolic link (not followed).
    Symlink,
    /// Anything else (device, socket, fifo).
    Other,
}

impl FileKind {
    /// Every kind.
    pub const ALL: [FileKind; 4] = [FileKind::File, FileKind::Dir, FileKind::Symlink, FileKind::Other];

    /// The lowercase name (as on the wire).
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Dir => "dir",
            FileKind::Symlink => "symlink",
            FileKind::Other => "other",
        }
    }
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A file in a sandbox (an entry of `files/list`, or the answer of `files/stat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Name in a listing; the full path for stat.
    pub name: String,
    /// What it is.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, unix seconds.
    pub mtime: i64,
}

impl Schema for FileInfo {
    const NAME: &'static str = "FileInfo";
    fn schema() -> Value {
        json!({ "type": "object", "properties": {
            "name": { "type": "string" }, "kind": { "type": "string", "enum": FileKind::ALL.map(FileKind::as_str) },
            "size": { "type": "integer" }, "mode": { "type": "integer" }, "mtime": { "type": "integer" } } })
    }
}
