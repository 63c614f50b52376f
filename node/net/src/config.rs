//! The transport's limits and timings, as code sets them and as the `[transport]` table of a
//! replica's configuration file writes them.

use std::time::Duration;

use pbft_core::codec::millis;
use pbft_core::messages::Limits;
use serde::{Deserialize, Serialize};

use crate::NetError;

/// Transport limits and timings. [`Default`] gives values suited to a LAN or a single host.
///
/// In a replica's configuration file this is the `[transport]` table: every key is optional and
/// takes its default when absent, durations are whole milliseconds under keys ending in `_ms`,
/// and unknown keys are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// The largest frame sent or accepted, in bytes (at most `u32::MAX`), as
    /// [`TransportConfig::max_frame()`] reads it: 16 MiB when absent, except in a replica, whose
    /// [`TransportConfig::checked`] makes it `protocol.limits.max_message_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_frame: Option<usize>,
    /// The largest frame a replica accepts from a client (one request envelope); a longer
    /// length prefix closes the connection. `max_frame` applies where it is smaller. As
    /// [`TransportConfig::max_client_frame()`] reads it: 8 MiB + 64 bytes when absent, except in
    /// a replica, whose [`TransportConfig::checked`] derives it from the protocol's limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_client_frame: Option<usize>,
    /// Bytes of frames being received from all clients together: each frame takes the room
    /// its length prefix claims until it has arrived, and reading waits for room. Default
    /// 256 MiB.
    pub client_assembly_bytes: usize,
    /// How long a client frame may take from its first byte to its last before the
    /// connection is closed, so unfinished frames do not hold that room. Default 20 s.
    #[serde(rename = "client_frame_timeout_ms", with = "millis")]
    pub client_frame_timeout: Duration,
    /// Frames waiting per destination before new ones are dropped. Default 1024.
    pub queue_capacity: usize,
    /// Bytes waiting per destination before new frames are dropped; a larger frame is taken
    /// only into an empty queue. Default 64 MiB.
    pub queue_bytes: usize,
    /// The same for each accepted client connection (its replies). Default 1 MiB.
    pub client_queue_bytes: usize,
    /// Received frames waiting for the caller before reading pauses (per kind of sender in an
    /// [`Inbox`](crate::Inbox)). Default 1024.
    pub incoming_capacity: usize,
    /// Bytes of received frames waiting for the caller before reading pauses (per kind of
    /// sender in an [`Inbox`](crate::Inbox); a larger frame waits alone). Default 128 MiB.
    pub incoming_bytes: usize,
    /// How often an idle connection sends a keep-alive. Default 1 s.
    #[serde(rename = "keep_alive_ms", with = "millis")]
    pub keep_alive: Duration,
    /// How long without any packet from the peer before a connection is dead. Must exceed
    /// `keep_alive`. Default 5 s.
    #[serde(rename = "idle_timeout_ms", with = "millis")]
    pub idle_timeout: Duration,
    /// The limit for the QUIC handshake plus the hello exchange. Default 5 s.
    #[serde(rename = "handshake_timeout_ms", with = "millis")]
    pub handshake_timeout: Duration,
    /// The first delay before dialing again after a failure. Default 50 ms.
    #[serde(rename = "backoff_min_ms", with = "millis")]
    pub backoff_min: Duration,
    /// The largest delay between dial attempts. Default 2 s.
    #[serde(rename = "backoff_max_ms", with = "millis")]
    pub backoff_max: Duration,
    /// Accepted connections from anyone but the replicas (handshakes in progress included)
    /// beyond which new ones are refused, unless a silent client makes way. Default 1024.
    pub max_connections: usize,
    /// Of those, the most from one IP address. Default 256.
    pub max_connections_per_address: usize,
    /// Accepted connections kept per client key (several processes may share a key); a newer
    /// one beyond this closes the oldest. Default 64.
    pub max_connections_per_client: usize,
    /// Connections accepted from each replica's listed address, beside `max_connections`, so
    /// that other parties can never lock a replica out. Such a connection takes a place only
    /// once it proved its address with a QUIC Retry, so forged packets take none. Default 4.
    pub connections_per_replica: usize,
    /// When the room for clients is full, a client connection silent for this long is closed
    /// to admit a new one. Default 5 s.
    #[serde(rename = "client_idle_eviction_ms", with = "millis")]
    pub client_idle_eviction: Duration,
    /// How long a client that sent an undecodable or wrongly signed message is disconnected
    /// and refused. Default 10 s.
    #[serde(rename = "client_ban_ms", with = "millis")]
    pub client_ban: Duration,
    /// Handshakes in progress beyond which a new connection must first prove its address with
    /// a QUIC Retry round trip. Default 64.
    pub retry_above_handshakes: usize,
    /// Bytes a connection from anywhere but a replica's listed address may have in flight
    /// unread (its QUIC stream and connection receive windows): with `max_connections`, this
    /// bounds what clients can make a replica buffer before the frame reader takes anything.
    /// Default 128 KiB.
    pub client_receive_window: u32,
    /// Binds the listening port so that another process may bind it too (`SO_REUSEPORT`); the
    /// kernel then hands each peer's packets to one of them. Only for two processes that share
    /// one replica's key on purpose (the `twin` test behaviour, which sets it). Default false.
    // Not a key of the table: a replica's behaviour decides it.
    #[serde(skip)]
    pub share_port: bool,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_frame: None,
            max_client_frame: None,
            client_assembly_bytes: 256 << 20,
            client_frame_timeout: Duration::from_secs(20),
            queue_capacity: 1024,
            queue_bytes: 64 << 20,
            client_queue_bytes: 1 << 20,
            incoming_capacity: 1024,
            incoming_bytes: 128 << 20,
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            max_connections: 1024,
            max_connections_per_address: 256,
            max_connections_per_client: 64,
            connections_per_replica: 4,
            client_idle_eviction: Duration::from_secs(5),
            client_ban: Duration::from_secs(10),
            retry_above_handshakes: 64,
            client_receive_window: 128 << 10,
            share_port: false,
        }
    }
}

/// A transport parameter that cannot be used, named as in the `[transport]` table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("transport.{field}: {reason}")]
pub struct TransportConfigError {
    /// The field at fault, as its key is written: `queue_capacity`, `keep_alive_ms`.
    pub field: &'static str,
    /// What is wrong with its value.
    pub reason: String,
}

fn invalid<T>(field: &'static str, reason: String) -> Result<T, TransportConfigError> {
    Err(TransportConfigError { field, reason })
}

impl TransportConfig {
    /// The largest frame sent or accepted: `max_frame`, or 16 MiB.
    pub fn max_frame(&self) -> usize {
        self.max_frame.unwrap_or(16 << 20)
    }

    /// The largest frame a replica accepts from a client: `max_client_frame`, or 8 MiB + 64.
    pub fn max_client_frame(&self) -> usize {
        self.max_client_frame.unwrap_or((8 << 20) + 64)
    }

    /// The configuration as read from a replica's file, made whole for a replica that accepts
    /// messages within `limits`, and checked. An absent `max_frame` is
    /// `limits.max_message_bytes` and an absent `max_client_frame` what one request envelope
    /// needs ([`Limits::max_client_message_bytes`]); neither may be smaller, or messages the
    /// protocol accepts could not travel. Then [`TransportConfig::validate`].
    pub fn checked(mut self, limits: &Limits) -> Result<TransportConfig, TransportConfigError> {
        let max_message = limits.max_message_bytes;
        let max_frame = *self
            .max_frame
            .get_or_insert_with(|| usize::try_from(max_message).unwrap_or(usize::MAX));
        if (max_frame as u64) < max_message {
            return invalid(
                "max_frame",
                format!(
                    "{max_frame} is smaller than protocol.limits.max_message_bytes \
                     ({max_message}): messages the protocol accepts could not be sent"
                ),
            );
        }
        let max_client_message = limits.max_client_message_bytes();
        let max_client_frame = *self
            .max_client_frame
            .get_or_insert_with(|| usize::try_from(max_client_message).unwrap_or(usize::MAX));
        if (max_client_frame as u64) < max_client_message {
            return invalid(
                "max_client_frame",
                format!(
                    "{max_client_frame} is smaller than the {max_client_message} bytes one \
                     request envelope of protocol.limits.max_batch_bytes needs"
                ),
            );
        }
        self.validate()?;
        Ok(self)
    }

    /// Checks every parameter and the relations between them: sizes and counts positive,
    /// `max_frame` at most `u32::MAX` (the length prefix), durations positive where they pace
    /// something, `idle_timeout` above `keep_alive` and within what QUIC can carry,
    /// `backoff_max` at least `backoff_min`.
    pub fn validate(&self) -> Result<(), TransportConfigError> {
        let max_frame = self.max_frame();
        if u32::try_from(max_frame).is_err() {
            return invalid("max_frame", format!("{max_frame} exceeds {}", u32::MAX));
        }
        let counts: [(&'static str, usize); 13] = [
            ("max_frame", max_frame),
            ("max_client_frame", self.max_client_frame()),
            ("queue_capacity", self.queue_capacity),
            ("queue_bytes", self.queue_bytes),
            ("client_queue_bytes", self.client_queue_bytes),
            ("client_assembly_bytes", self.client_assembly_bytes),
            ("incoming_capacity", self.incoming_capacity),
            ("incoming_bytes", self.incoming_bytes),
            ("max_connections", self.max_connections),
            (
                "max_connections_per_address",
                self.max_connections_per_address,
            ),
            (
                "max_connections_per_client",
                self.max_connections_per_client,
            ),
            ("connections_per_replica", self.connections_per_replica),
            ("client_receive_window", self.client_receive_window as usize),
        ];
        let durations: [(&'static str, Duration); 4] = [
            ("keep_alive_ms", self.keep_alive),
            ("handshake_timeout_ms", self.handshake_timeout),
            ("client_frame_timeout_ms", self.client_frame_timeout),
            ("backoff_min_ms", self.backoff_min),
        ];
        for (field, value) in counts {
            if value == 0 {
                return invalid(field, "must be positive, not 0".into());
            }
        }
        for (field, value) in durations {
            if value.is_zero() {
                return invalid(field, "must be positive, not 0".into());
            }
        }
        if self.idle_timeout <= self.keep_alive {
            return invalid(
                "idle_timeout_ms",
                format!(
                    "{} must exceed transport.keep_alive_ms ({}), or quiet links would be \
                     declared dead",
                    self.idle_timeout.as_millis(),
                    self.keep_alive.as_millis()
                ),
            );
        }
        self.quic_idle_timeout()?;
        if self.backoff_max < self.backoff_min {
            return invalid(
                "backoff_max_ms",
                format!(
                    "{} is below transport.backoff_min_ms ({})",
                    self.backoff_max.as_millis(),
                    self.backoff_min.as_millis()
                ),
            );
        }
        Ok(())
    }

    fn quic_idle_timeout(&self) -> Result<quinn::IdleTimeout, TransportConfigError> {
        quinn::IdleTimeout::try_from(self.idle_timeout).or_else(|_| {
            invalid(
                "idle_timeout_ms",
                format!(
                    "{} is longer than a QUIC idle timeout can be",
                    self.idle_timeout.as_millis()
                ),
            )
        })
    }

    /// QUIC settings shared by both sides; `peer_streams` is how many bidirectional streams the
    /// peer may open (one for an accepted connection, none for a dialed one).
    pub(crate) fn quic(&self, peer_streams: u32) -> Result<quinn::TransportConfig, NetError> {
        let idle = self.quic_idle_timeout()?;
        let mut quic = quinn::TransportConfig::default();
        quic.keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(Some(idle))
            .max_concurrent_bidi_streams(peer_streams.into())
            .max_concurrent_uni_streams(0u32.into())
            .datagram_receive_buffer_size(None);
        Ok(quic)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::error::Error;

    use pbft_core::messages::Limits;

    use super::TransportConfig;
    use crate::NetError;

    fn parse(table: &str) -> Result<TransportConfig, toml::de::Error> {
        toml::from_str(table)
    }

    /// The field `config` is refused for.
    fn refused(config: TransportConfig) -> &'static str {
        config.validate().expect_err("should be refused").field
    }

    #[test]
    fn an_empty_table_gives_the_defaults() {
        assert_eq!(parse("").unwrap(), TransportConfig::default());
        assert_eq!(TransportConfig::default().validate(), Ok(()));
    }

    #[test]
    fn keys_are_those_of_the_file_and_durations_whole_milliseconds() {
        let config = parse(
            "max_frame = 4096\nmax_client_frame = 2048\nqueue_capacity = 7\n\
             keep_alive_ms = 300\nidle_timeout_ms = 900\nclient_ban_ms = 12\n",
        )
        .unwrap();
        assert_eq!(config.max_frame(), 4096);
        assert_eq!(config.max_client_frame(), 2048);
        assert_eq!(config.queue_capacity, 7);
        assert_eq!(config.keep_alive, Duration::from_millis(300));
        assert_eq!(config.idle_timeout, Duration::from_millis(900));
        assert_eq!(config.client_ban, Duration::from_millis(12));
        assert_eq!(config.backoff_max, TransportConfig::default().backoff_max);
        let text = toml::to_string(&config).unwrap();
        assert!(text.contains("keep_alive_ms = 300\n"), "{text}");
        assert_eq!(parse(&text).unwrap(), config);
        // Frame sizes left to the protocol's limits stay absent when written.
        let text = toml::to_string(&TransportConfig::default()).unwrap();
        assert!(!text.contains("max_frame"), "{text}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        for table in ["colour = 3", "keep_alive = 300", "share_port = true"] {
            let error = parse(table).expect_err(table).to_string();
            assert!(error.contains("unknown field"), "{table}: {error}");
        }
    }

    #[test]
    fn each_rule_names_its_field() {
        let base = TransportConfig::default;
        let ms = Duration::from_millis;
        let cases: Vec<(TransportConfig, &str)> = vec![
            (
                TransportConfig {
                    max_frame: Some(0),
                    ..base()
                },
                "max_frame",
            ),
            (
                TransportConfig {
                    max_frame: Some(u32::MAX as usize + 1),
                    ..base()
                },
                "max_frame",
            ),
            (
                TransportConfig {
                    max_client_frame: Some(0),
                    ..base()
                },
                "max_client_frame",
            ),
            (
                TransportConfig {
                    queue_capacity: 0,
                    ..base()
                },
                "queue_capacity",
            ),
            (
                TransportConfig {
                    queue_bytes: 0,
                    ..base()
                },
                "queue_bytes",
            ),
            (
                TransportConfig {
                    client_queue_bytes: 0,
                    ..base()
                },
                "client_queue_bytes",
            ),
            (
                TransportConfig {
                    client_assembly_bytes: 0,
                    ..base()
                },
                "client_assembly_bytes",
            ),
            (
                TransportConfig {
                    incoming_capacity: 0,
                    ..base()
                },
                "incoming_capacity",
            ),
            (
                TransportConfig {
                    incoming_bytes: 0,
                    ..base()
                },
                "incoming_bytes",
            ),
            (
                TransportConfig {
                    max_connections: 0,
                    ..base()
                },
                "max_connections",
            ),
            (
                TransportConfig {
                    max_connections_per_address: 0,
                    ..base()
                },
                "max_connections_per_address",
            ),
            (
                TransportConfig {
                    max_connections_per_client: 0,
                    ..base()
                },
                "max_connections_per_client",
            ),
            (
                TransportConfig {
                    connections_per_replica: 0,
                    ..base()
                },
                "connections_per_replica",
            ),
            (
                TransportConfig {
                    client_receive_window: 0,
                    ..base()
                },
                "client_receive_window",
            ),
            (
                TransportConfig {
                    keep_alive: ms(0),
                    ..base()
                },
                "keep_alive_ms",
            ),
            (
                TransportConfig {
                    handshake_timeout: ms(0),
                    ..base()
                },
                "handshake_timeout_ms",
            ),
            (
                TransportConfig {
                    client_frame_timeout: ms(0),
                    ..base()
                },
                "client_frame_timeout_ms",
            ),
            (
                TransportConfig {
                    backoff_min: ms(0),
                    ..base()
                },
                "backoff_min_ms",
            ),
            (
                TransportConfig {
                    keep_alive: ms(5000),
                    idle_timeout: ms(5000),
                    ..base()
                },
                "idle_timeout_ms",
            ),
            (
                TransportConfig {
                    idle_timeout: ms(u64::MAX),
                    ..base()
                },
                "idle_timeout_ms",
            ),
            (
                TransportConfig {
                    backoff_min: ms(500),
                    backoff_max: ms(499),
                    ..base()
                },
                "backoff_max_ms",
            ),
        ];
        for (config, field) in cases {
            assert_eq!(refused(config), field);
        }
    }

    #[test]
    fn errors_say_why() {
        let error = TransportConfig {
            keep_alive: Duration::from_millis(5000),
            idle_timeout: Duration::from_millis(5000),
            ..TransportConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "transport.idle_timeout_ms: 5000 must exceed transport.keep_alive_ms (5000), or \
             quiet links would be declared dead"
        );
    }

    #[test]
    fn absent_frame_sizes_follow_the_protocol_limits() {
        let limits = Limits::default();
        let config = TransportConfig::default().checked(&limits).unwrap();
        assert_eq!(config.max_frame() as u64, limits.max_message_bytes);
        assert_eq!(
            config.max_client_frame() as u64,
            limits.max_client_message_bytes()
        );

        let small = TransportConfig {
            max_frame: Some(1024),
            ..TransportConfig::default()
        };
        let error = small.checked(&limits).unwrap_err();
        assert_eq!(error.field, "max_frame");
        assert!(
            error
                .reason
                .starts_with("1024 is smaller than protocol.limits.max_message_bytes"),
            "{error}"
        );
        let small = TransportConfig {
            max_client_frame: Some(4096),
            ..TransportConfig::default()
        };
        assert_eq!(
            small.checked(&limits).unwrap_err().field,
            "max_client_frame"
        );
        // The other rules still apply once the sizes are made whole.
        let zero = TransportConfig {
            queue_capacity: 0,
            ..TransportConfig::default()
        };
        assert_eq!(zero.checked(&limits).unwrap_err().field, "queue_capacity");
    }

    #[test]
    fn a_setup_error_keeps_the_field_at_fault_as_its_cause() {
        let config = TransportConfig {
            queue_capacity: 0,
            ..TransportConfig::default()
        };
        let error = NetError::from(config.validate().unwrap_err());
        assert_eq!(error.to_string(), "invalid transport configuration");
        let cause = error.source().expect("a cause").to_string();
        assert_eq!(cause, "transport.queue_capacity: must be positive, not 0");
    }
}
