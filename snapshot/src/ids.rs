//! Newtypes for the ids that cross crate boundaries.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub struct $name(pub u64);

        impl $name {
            /// Big-endian key bytes, so RocksDB iterates in id order.
            pub fn key(self) -> [u8; 8] {
                self.0.to_be_bytes()
            }

            /// Reads an id from its key bytes.
            pub fn from_key(key: &[u8]) -> Option<Self> {
                Some(Self(u64::from_be_bytes(key.try_into().ok()?)))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;

            /// Accepts the display form (`s12`, `w3`) and the bare number.
            fn from_str(s: &str) -> Result<Self> {
                let digits = s.strip_prefix($prefix).unwrap_or(s);
                digits
                    .parse::<u64>()
                    .ok()
                    .filter(|_| !digits.starts_with('+'))
                    .map(Self)
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            concat!("not a ", $prefix, "<number> id: {:?}"),
                            s
                        ))
                    })
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A snapshot's id: `s` and a number, allocated in creation order, never reused.
    SnapshotId,
    "s"
);
id_type!(
    /// A workspace's id: `w` and a number, never reused.
    WorkspaceId,
    "w"
);

/// An inode number inside one workspace; stable for the workspace's lifetime.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Ino(pub u64);

impl Ino {
    /// The root directory of every workspace (FUSE's root inode number).
    pub const ROOT: Ino = Ino(1);
}

impl fmt::Display for Ino {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ino {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_with_and_without_prefix() {
        assert_eq!("s12".parse::<SnapshotId>().ok(), Some(SnapshotId(12)));
        assert_eq!("12".parse::<SnapshotId>().ok(), Some(SnapshotId(12)));
        assert_eq!(SnapshotId(7).to_string(), "s7");
        assert!("w1".parse::<SnapshotId>().is_err());
        assert!("s+1".parse::<SnapshotId>().is_err());
        assert!("".parse::<WorkspaceId>().is_err());
    }
}
