//! POSIX access ACLs as `setxattr("system.posix_acl_access")` delivers them: what they
//! mean for the mode bits. Tools copy permissions that way (`sed -i`, `cp -p` through
//! libacl), so a filesystem that kept the xattr and ignored the mode would leave files
//! with the temporary file's mode (0600).

/// The xattr name of a file's access ACL.
pub const ACCESS: &[u8] = b"system.posix_acl_access";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// What setting an access ACL means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effect {
    /// The permission bits (`0o777`) the ACL implies.
    pub perms: u32,
    /// True when the ACL says no more than the mode: store no xattr.
    pub minimal: bool,
}

/// Parses an access ACL (little-endian: u32 version 2, then 8-byte entries of u16 tag,
/// u16 perm, u32 id); `None` when malformed.
pub fn effect(value: &[u8]) -> Option<Effect> {
    let (head, body) = value.split_at_checked(4)?;
    if u32::from_le_bytes(head.try_into().ok()?) != VERSION || body.len() % 8 != 0 {
        return None;
    }
    let (mut user, mut group, mut other, mut mask) = (None, None, None, None);
    let mut extended = false;
    for e in body.chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u32::from(u16::from_le_bytes([e[2], e[3]]) & 0o7);
        match tag {
            USER_OBJ => user = Some(perm),
            GROUP_OBJ => group = Some(perm),
            OTHER => other = Some(perm),
            MASK => mask = Some(perm),
            USER | GROUP => extended = true,
            _ => return None,
        }
    }
    let (user, group, other) = (user?, group?, other?);
    // With a mask, the group bits of the mode are the mask (POSIX.1e).
    let group_bits = mask.unwrap_or(group);
    Some(Effect {
        perms: user << 6 | group_bits << 3 | other,
        minimal: !extended && mask.is_none(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16)]) -> Vec<u8> {
        let mut v = VERSION.to_le_bytes().to_vec();
        for (tag, perm) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&u32::MAX.to_le_bytes());
        }
        v
    }

    #[test]
    fn a_minimal_acl_is_a_mode() {
        let e = effect(&acl(&[(USER_OBJ, 6), (GROUP_OBJ, 4), (OTHER, 4)])).expect("valid");
        assert_eq!(
            e,
            Effect {
                perms: 0o644,
                minimal: true
            }
        );
    }

    #[test]
    fn an_extended_acl_sets_group_bits_from_the_mask() {
        let e = effect(&acl(&[
            (USER_OBJ, 7),
            (USER, 7),
            (GROUP_OBJ, 5),
            (MASK, 5),
            (OTHER, 0),
        ]))
        .expect("valid");
        assert_eq!(
            e,
            Effect {
                perms: 0o750,
                minimal: false
            }
        );
    }

    #[test]
    fn malformed_acls_are_refused() {
        assert_eq!(effect(b""), None);
        assert_eq!(effect(&[1, 0, 0, 0]), None);
        assert_eq!(effect(&acl(&[(USER_OBJ, 6)])), None);
        let mut bad = acl(&[(USER_OBJ, 6), (GROUP_OBJ, 4), (OTHER, 4)]);
        bad.pop();
        assert_eq!(effect(&bad), None);
    }
}
