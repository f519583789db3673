//! What a process reads about itself from `/proc`: shared by the load generator and the floor
//! server (`floor`). Plain std, so that the floor binary can include it as is.

/// Resident set size in bytes (`/proc/self/statm`, 4 KiB pages); 0 where it cannot be read.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}
