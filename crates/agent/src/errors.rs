//! Turning I/O errors into protocol errors: kind mapping and bounded messages.

use std::io;

use kiln_proto::{ErrorKind, GuestMsg, RequestId, MAX_TEXT};

/// The protocol's kind for an I/O error.
pub fn kind_of(e: &io::Error) -> ErrorKind {
    match e.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => ErrorKind::InvalidInput,
        _ => ErrorKind::Io,
    }
}

/// Cuts `s` to at most [`MAX_TEXT`] bytes, on a char boundary.
pub fn truncate_text(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// An `Error` reply with a bounded message.
pub fn error(id: RequestId, kind: ErrorKind, message: impl Into<String>) -> GuestMsg {
    GuestMsg::Error { id, kind, message: truncate_text(message.into()) }
}

/// An `Error` reply for a failed file operation: `"<op> <path>: <error>"`.
pub fn io_error(id: RequestId, op: &str, path: &str, e: &io::Error) -> GuestMsg {
    error(id, kind_of(e), format!("{op} {path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_io_kinds() {
        let k = |kind| kind_of(&io::Error::from(kind));
        assert_eq!(k(io::ErrorKind::NotFound), ErrorKind::NotFound);
        assert_eq!(k(io::ErrorKind::PermissionDenied), ErrorKind::PermissionDenied);
        assert_eq!(k(io::ErrorKind::AlreadyExists), ErrorKind::AlreadyExists);
        assert_eq!(k(io::ErrorKind::InvalidInput), ErrorKind::InvalidInput);
        assert_eq!(k(io::ErrorKind::BrokenPipe), ErrorKind::Io);
        assert_eq!(kind_of(&io::Error::from_raw_os_error(libc::ENOENT)), ErrorKind::NotFound);
        assert_eq!(kind_of(&io::Error::from_raw_os_error(libc::EACCES)), ErrorKind::PermissionDenied);
        assert_eq!(kind_of(&io::Error::from_raw_os_error(libc::ENOSPC)), ErrorKind::Io);
    }

    #[test]
    fn truncates_on_char_boundary() {
        assert_eq!(truncate_text("short".into()), "short");
        let exact = "a".repeat(MAX_TEXT);
        assert_eq!(truncate_text(exact.clone()), exact);
        // 'é' is two bytes: MAX_TEXT - 1 ASCII bytes then 'é' straddles the limit.
        let s = format!("{}é", "a".repeat(MAX_TEXT - 1));
        let t = truncate_text(s);
        assert_eq!(t.len(), MAX_TEXT - 1);
        let long = "é".repeat(MAX_TEXT);
        let t = truncate_text(long);
        assert!(t.len() <= MAX_TEXT && t.chars().all(|c| c == 'é'));
    }

    #[test]
    fn io_error_message_names_op_and_path() {
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        match io_error(4, "stat", "/nope", &e) {
            GuestMsg::Error { id: 4, kind: ErrorKind::NotFound, message } => {
                assert!(message.starts_with("stat /nope: "), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
