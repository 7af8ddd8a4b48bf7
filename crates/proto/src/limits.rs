//! Size limits shared by both sides. The host enforces them on everything the guest sends.

/// Largest payload of one frame, in bytes.
pub const MAX_FRAME: usize = 256 * 1024;
/// Largest data chunk (output, stdin, file contents) in one message.
pub const MAX_CHUNK: usize = 64 * 1024;
/// Longest path accepted in a request or reply.
pub const MAX_PATH: usize = 4096;
/// Longest free-text message (errors, versions) accepted from the guest.
pub const MAX_TEXT: usize = 4096;
/// Most directory entries in one listing reply; the agent sends several replies beyond this.
pub const MAX_ENTRIES: usize = 1024;
/// Most arguments plus environment entries in one exec request.
pub const MAX_ARGS: usize = 4096;
/// Most bytes of entropy the host hands the guest in one identity message.
pub const MAX_ENTROPY: usize = 512;
/// Default cap on the size of a file written or read through the file API.
pub const DEFAULT_MAX_FILE: u64 = 1 << 30;
