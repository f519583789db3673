//! Random names: a cluster node's id and a history's epoch. They need not be secret, only
//! unique: from the kernel's generator, with a time-and-address fallback.

use std::time::{SystemTime, UNIX_EPOCH};

/// 16 random bytes from the kernel (a node id need not be secret, only unique).
pub(crate) fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getrandom writes at most `id.len()` bytes into the live local array.
        let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
        if n == id.len() as isize {
            return id;
        }
    }
    // Fallback: time and address entropy, unique enough for telling nodes apart.
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let t = now_us ^ (std::process::id() as u64) << 32;
    let a = &id as *const _ as u64;
    id[..8].copy_from_slice(&t.to_be_bytes());
    id[8..].copy_from_slice(&a.to_be_bytes());
    id
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new epoch name: 12 random hex digits.
pub(crate) fn random_epoch() -> String {
    hex(&random_id()[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_twelve_hex_digits_and_differ() {
        let a = random_epoch();
        assert_eq!(a.len(), 12);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(a, random_epoch());
        assert_ne!(random_id(), random_id());
        assert_eq!(hex(&[0, 0xab, 7]), "00ab07");
    }
}
