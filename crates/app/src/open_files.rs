//! Fitting the listeners' connection limits to the process's open-file
//! limit, so that a flood on one listener runs into its own limit (and is
//! refused, counted) before it runs the process out of file descriptors,
//! which would starve the other listener, the admin server, the control
//! plane's streams and certificate renewal alike.

use linnet_config::Config;

/// File descriptors kept back for everything but proxied connections: the
/// listeners, the admin server and its scrapes, the control plane's
/// connections, DNS, identity files, logs.
pub(crate) const RESERVED: u64 = 128;

/// Descriptors one proxied connection may hold: the client's and the
/// target's.
const PER_CONNECTION: u64 = 2;

/// Raises the soft open-file limit to the hard one, then lowers the two
/// listeners' `max_connections` when together they could need more
/// descriptors than that allows (see [`fitted`]).
pub(crate) fn fit(config: &mut Config) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let mut soft = limit.current;
    if limit.current < limit.maximum || (limit.current.is_some() && limit.maximum.is_none()) {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => soft = limit.maximum,
            Err(error) => {
                tracing::debug!(%error, "could not raise the open-file limit to its maximum");
            }
        }
    }
    let Some(soft) = soft else {
        return; // Unlimited.
    };
    let (inbound, outbound) = fitted(
        soft,
        config.inbound.max_connections,
        config.outbound.max_connections,
    );
    if (inbound, outbound)
        != (
            config.inbound.max_connections,
            config.outbound.max_connections,
        )
    {
        tracing::warn!(
            open_file_limit = soft,
            inbound_max_connections = inbound,
            outbound_max_connections = outbound,
            configured_inbound = config.inbound.max_connections,
            configured_outbound = config.outbound.max_connections,
            "the open-file limit cannot hold both listeners' connections: lowering their limits (raise the limit, or set INBOUND_MAX_CONNECTIONS and OUTBOUND_MAX_CONNECTIONS)"
        );
        config.inbound.max_connections = inbound;
        config.outbound.max_connections = outbound;
    }
}

/// The two limits, lowered when `open_files` cannot hold them: each
/// listener is sure of half the room, and one that asks for less leaves
/// the rest to the other.
fn fitted(open_files: u64, inbound: usize, outbound: usize) -> (usize, usize) {
    let room = (open_files.saturating_sub(RESERVED) / PER_CONNECTION).max(2);
    let (a, b) = (inbound as u64, outbound as u64);
    if a + b <= room {
        return (inbound, outbound);
    }
    let half = room / 2;
    let (a, b) = if a <= half {
        (a, room - a)
    } else if b <= half {
        (room - b, b)
    } else {
        (half, room - half)
    };
    (a as usize, b as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_that_fit_are_kept() {
        assert_eq!(fitted(1_048_576, 20_000, 20_000), (20_000, 20_000));
        assert_eq!(fitted(RESERVED + 200, 50, 50), (50, 50));
    }

    #[test]
    fn limits_that_do_not_fit_share_the_room() {
        // 20,000 descriptors: room for 9,936 connections.
        let (i, o) = fitted(20_000, 20_000, 20_000);
        assert_eq!((i, o), (4_968, 4_968));
        assert!((i + o) as u64 * PER_CONNECTION + RESERVED <= 20_000);
        // A small limit is kept; the other takes the rest.
        assert_eq!(fitted(20_000, 20_000, 2), (9_934, 2));
        assert_eq!(fitted(20_000, 100, 20_000), (100, 9_836));
        assert_eq!(fitted(1_128, 3_000, 1_000), (250, 250));
        // Never below one each, however small the limit.
        assert_eq!(fitted(10, 5, 5), (1, 1));
    }
}
