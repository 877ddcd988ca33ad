//! Linux errno values, as 9P2000.L's Rlerror carries them, by name.
//!
//! The server (QEMU's 9p backend) answers a failed request with
//! `Rlerror ecode[4]`, the host's `errno`. [`Errno`] prints it the way a
//! person knows it: `ENOENT (no such file or directory)`.

use core::fmt;

/// An errno from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub u32);

/// No such file or directory.
pub const ENOENT: Errno = Errno(2);
/// Permission denied.
pub const EACCES: Errno = Errno(13);
/// File exists.
pub const EEXIST: Errno = Errno(17);
/// Not a directory.
pub const ENOTDIR: Errno = Errno(20);
/// Is a directory.
pub const EISDIR: Errno = Errno(21);

const NAMES: &[(u32, &str, &str)] = &[
    (1, "EPERM", "operation not permitted"),
    (2, "ENOENT", "no such file or directory"),
    (5, "EIO", "input/output error"),
    (9, "EBADF", "bad file descriptor"),
    (11, "EAGAIN", "try again"),
    (12, "ENOMEM", "out of memory"),
    (13, "EACCES", "permission denied"),
    (16, "EBUSY", "device or resource busy"),
    (17, "EEXIST", "file exists"),
    (18, "EXDEV", "cross-device link"),
    (20, "ENOTDIR", "not a directory"),
    (21, "EISDIR", "is a directory"),
    (22, "EINVAL", "invalid argument"),
    (23, "ENFILE", "file table overflow"),
    (24, "EMFILE", "too many open files"),
    (27, "EFBIG", "file too large"),
    (28, "ENOSPC", "no space left on device"),
    (30, "EROFS", "read-only file system"),
    (36, "ENAMETOOLONG", "file name too long"),
    (39, "ENOTEMPTY", "directory not empty"),
    (40, "ELOOP", "too many symbolic links"),
    (95, "EOPNOTSUPP", "operation not supported"),
    (122, "EDQUOT", "quota exceeded"),
];

impl Errno {
    /// The symbolic name (`ENOENT`), if this is a common errno.
    pub fn name(self) -> Option<&'static str> {
        NAMES.iter().find(|e| e.0 == self.0).map(|e| e.1)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match NAMES.iter().find(|e| e.0 == self.0) {
            Some((_, name, text)) => write!(f, "{name} ({text})"),
            None => write!(f, "errno {}", self.0),
        }
    }
}
