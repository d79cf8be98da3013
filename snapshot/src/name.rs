//! `Name`: one validated path component.

use std::fmt;

use crate::error::{Error, Result};

/// The longest name Linux filesystems accept, in bytes.
pub const NAME_MAX: usize = 255;

/// A single directory-entry name: 1..=255 bytes, not `.` or `..`, no `/`, no NUL.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Box<[u8]>);

impl Name {
    /// Validates `bytes` as a name.
    pub fn new(bytes: &[u8]) -> Result<Name> {
        if bytes.len() > NAME_MAX {
            return Err(Error::NameTooLong(bytes.len()));
        }
        if bytes.is_empty()
            || bytes == b"."
            || bytes == b".."
            || bytes.iter().any(|&b| b == b'/' || b == 0)
        {
            return Err(Error::InvalidName(
                String::from_utf8_lossy(bytes).into_owned(),
            ));
        }
        Ok(Name(bytes.into()))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The name as an `OsStr` (Unix names are bytes).
    pub fn as_os_str(&self) -> &std::ffi::OsStr {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(&self.0)
    }
}

impl TryFrom<&str> for Name {
    type Error = Error;
    fn try_from(s: &str) -> Result<Name> {
        Name::new(s.as_bytes())
    }
}

impl TryFrom<&std::ffi::OsStr> for Name {
    type Error = Error;
    fn try_from(s: &std::ffi::OsStr) -> Result<Name> {
        use std::os::unix::ffi::OsStrExt;
        Name::new(s.as_bytes())
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_posix_rejects() {
        assert!(matches!(Name::new(b""), Err(Error::InvalidName(_))));
        assert!(matches!(Name::new(b"."), Err(Error::InvalidName(_))));
        assert!(matches!(Name::new(b".."), Err(Error::InvalidName(_))));
        assert!(matches!(Name::new(b"a/b"), Err(Error::InvalidName(_))));
        assert!(matches!(Name::new(b"a\0b"), Err(Error::InvalidName(_))));
        assert!(matches!(
            Name::new(&[b'x'; 256]),
            Err(Error::NameTooLong(256))
        ));
        assert!(Name::new(&[b'x'; 255]).is_ok());
        assert!(Name::new(b"...").is_ok());
        assert!(Name::new("é\u{1F600}".as_bytes()).is_ok());
    }
}
