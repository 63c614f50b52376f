//! File descriptors for the durable log.
//!
//! A replica stops when a durable write fails, so running out of descriptors must not be
//! something a peer can cause. Rather than retry writes while something else holds the
//! descriptors, a replica makes sure they cannot run out, which holds because everything that
//! takes a descriptor is bounded by the configuration:
//! - the QUIC endpoint is one UDP socket, however many connections it carries;
//! - the log holds one segment open, and for a moment a new segment or its directory;
//! - the metrics endpoint holds its listener and at most `metrics_server.max_connections`
//!   connections: one beyond them is closed as soon as it is accepted;
//! - the rest (standard streams, the async runtime's own) is fixed.
//!
//! [`reserve`] raises the soft limit on open files to the hard limit at start, and refuses to
//! run when that sum, with room to spare, does not fit under it.

/// Descriptors a replica may need besides its metrics connections: the fixed ones listed in
/// the module docs, with ample room for what libraries open.
pub const FIXED_DESCRIPTORS: u64 = 128;

/// Raises the soft limit on open files to the hard limit and checks that `metrics_connections`
/// connections fit under it beside [`FIXED_DESCRIPTORS`]. Returns the soft limit in force, or
/// why the replica must not run.
#[cfg(unix)]
pub fn reserve(metrics_connections: usize) -> Result<u64, String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};

    let needed = FIXED_DESCRIPTORS + metrics_connections as u64;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| format!("cannot read the limit on open files: {e}"))?;
    let mut limit = soft;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => limit = hard,
            // Some systems refuse an unlimited hard limit here; the soft one may still do.
            Err(error) => tracing::warn!(%error, soft, hard, "cannot raise the open files limit"),
        }
    }
    if limit < needed {
        return Err(format!(
            "the limit on open files is {limit}, below the {needed} this replica may hold \
             ({FIXED_DESCRIPTORS} + metrics_server.max_connections = {metrics_connections}); \
             raise it (ulimit -n) or lower metrics_server.max_connections"
        ));
    }
    Ok(limit)
}

/// Elsewhere the limit is left as it is.
#[cfg(not(unix))]
pub fn reserve(_metrics_connections: usize) -> Result<u64, String> {
    Ok(u64::MAX)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        use nix::sys::resource::{getrlimit, Resource};
        let limit = reserve(64).unwrap();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(limit, soft);
        assert!(soft == hard || soft >= FIXED_DESCRIPTORS + 64);
        assert!(reserve(usize::MAX / 2).is_err(), "more than any limit");
    }
}
