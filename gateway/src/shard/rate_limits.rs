//! A shard's rate limits: one token bucket per user for `send_message`, and one per source
//! address for connection attempts, each in a map of this shard's bounded by config.
//!
//! Why per shard: a shard's state is touched by its thread alone, so the buckets need no
//! lock and no atomics. The price is that the limits are per shard where a client spreads
//! over shards. A user's messages are counted on the shard of the connection they arrive
//! on, so a user with devices on several shards gets up to one `user_msgs_per_s` per shard
//! (most users have one or two connections). One address's connections are spread over
//! the shards by the kernel (`SO_REUSEPORT` hashes the 4-tuple), so each shard takes its
//! share of `ip_connects_per_s` and `ip_connects_burst`, rounded up: together they
//! approximate the configured limit, within one token per shard.
//!
//! Only `send_message` counts against the message limit: it is the one client message that
//! is stored and delivered, and so the one a flood costs the server and the recipients for.
//! Receipts, presence, typing, history and heartbeats are bounded by their own limits (the
//! outboxes, `presence_users_max`, the history page) and are not counted.
//!
//! The state reads no clock: the shells (the connection task, the accept loop) pass
//! `now_ms`, milliseconds of a monotonic clock since [`RateLimits::origin`].

use std::cell::RefCell;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

use wire::{ClientMessage, UserId};

use crate::config::Limits;
use crate::metrics::ShardMetrics;
use crate::session::rate_limit::{Rate, RateLimiter, RetryAfterMs, Verdict};

/// The text of the `error` that answers a message over the user's limit.
pub const USER_MSGS_TEXT: &str = "too many messages; retry after retry_after_ms";

/// The key of an address's bucket: an IPv4 address, or the /64 network of an IPv6 one,
/// since one subscriber is handed a whole /64 and could otherwise take a new bucket per
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    V4([u8; 4]),
    V6Net([u8; 8]),
}

impl SourceKey {
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(v4.octets()),
            // An IPv4 client of a dual-stack listener is the IPv4 address it is.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4.octets()),
                None => SourceKey::V6Net(network_64(v6)),
            },
        }
    }
}

fn network_64(v6: Ipv6Addr) -> [u8; 8] {
    let octets = v6.octets();
    let mut net = [0; 8];
    net.copy_from_slice(&octets[..8]);
    net
}

/// One shard's buckets.
#[derive(Debug)]
pub struct RateLimits {
    /// The origin of `now_ms`; set once, when the shard starts.
    pub origin: Instant,
    user_msgs: RefCell<RateLimiter<UserId>>,
    ip_connects: RefCell<RateLimiter<SourceKey>>,
}

impl RateLimits {
    pub fn new(limits: &Limits, n_shards: u16, origin: Instant) -> RateLimits {
        let user_msgs = Rate {
            per_s: limits.user_msgs_per_s,
            burst: limits.user_msgs_burst,
        };
        let ip_connects = Rate {
            per_s: limits.ip_connects_per_s,
            burst: limits.ip_connects_burst,
        }
        .share(u64::from(n_shards));
        RateLimits {
            origin,
            user_msgs: RefCell::new(RateLimiter::new(user_msgs, limits.user_msgs_buckets_max)),
            ip_connects: RefCell::new(RateLimiter::new(
                ip_connects,
                limits.ip_connects_buckets_max,
            )),
        }
    }

    /// Milliseconds from the origin to `now`, a time a shell read.
    pub fn ms_at(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether `user` may send `message` now; counts what it refuses. `now_ms` is called
    /// only for a message that counts while the limit is on: most client messages (receipts,
    /// heartbeats) then cost no clock read.
    pub fn message(
        &self,
        user: &UserId,
        message: &ClientMessage,
        now_ms: impl FnOnce() -> u64,
        metrics: &ShardMetrics,
    ) -> Result<(), RetryAfterMs> {
        let mut user_msgs = self.user_msgs.borrow_mut();
        if !matches!(message, ClientMessage::SendMessage(_)) || !user_msgs.is_on() {
            return Ok(());
        }
        let verdict = user_msgs.take(user, now_ms());
        counted(
            verdict,
            &metrics.user_msgs_limited,
            &metrics.user_msgs_untracked,
        )
    }

    /// Whether a connection from `ip` may be taken now; counts what it refuses.
    pub fn connect(
        &self,
        ip: IpAddr,
        now_ms: u64,
        metrics: &ShardMetrics,
    ) -> Result<(), RetryAfterMs> {
        let verdict = self
            .ip_connects
            .borrow_mut()
            .take(&SourceKey::of(ip), now_ms);
        counted(
            verdict,
            &metrics.ip_connects_limited,
            &metrics.ip_connects_untracked,
        )
    }

    /// Buckets held, users' then addresses': for the gauges and the tests.
    pub fn buckets(&self) -> (usize, usize) {
        (
            self.user_msgs.borrow().len(),
            self.ip_connects.borrow().len(),
        )
    }

    /// Drops the buckets that have filled up again (a full bucket is the same as none), at
    /// most once a second: called on the router loop's tick, it keeps the maps to the keys
    /// that acted lately at the cost of one pass over each map a second, so that a full map
    /// rarely has to make room while a client waits.
    pub fn tidy(&self, now_ms: u64) {
        self.user_msgs.borrow_mut().tidy(now_ms);
        self.ip_connects.borrow_mut().tidy(now_ms);
    }
}

fn counted(
    verdict: Verdict,
    limited: &std::sync::atomic::AtomicU64,
    untracked: &std::sync::atomic::AtomicU64,
) -> Result<(), RetryAfterMs> {
    match verdict {
        Verdict::Allowed => Ok(()),
        Verdict::AllowedUntracked => {
            ShardMetrics::add(untracked, 1);
            Ok(())
        }
        Verdict::Limited(wait) => {
            ShardMetrics::add(limited, 1);
            Err(wait)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            user_msgs_per_s: 1,
            user_msgs_burst: 2,
            ip_connects_per_s: 4,
            ip_connects_burst: 4,
            ..Limits::default()
        }
    }

    fn send() -> ClientMessage {
        let text = r#"{"type":"send_message","client_msg_id":1,"to":"bob","content":"hi"}"#;
        wire::json::decode_client(text.as_bytes(), &wire::Limits::DEFAULT).unwrap()
    }

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    #[test]
    fn only_send_message_counts_and_each_user_has_a_bucket() {
        let rates = RateLimits::new(&limits(), 1, Instant::now());
        let metrics = ShardMetrics::default();
        let alice = user("alice");
        assert_eq!(rates.message(&alice, &send(), || 0, &metrics), Ok(()));
        assert_eq!(rates.message(&alice, &send(), || 0, &metrics), Ok(()));
        assert_eq!(
            rates.message(&alice, &send(), || 0, &metrics),
            Err(RetryAfterMs(1000))
        );
        // Typing and heartbeats are not messages that count.
        let typing = ClientMessage::Heartbeat;
        assert_eq!(rates.message(&alice, &typing, || 0, &metrics), Ok(()));
        assert_eq!(rates.message(&user("bob"), &send(), || 0, &metrics), Ok(()));
        let limited = metrics
            .user_msgs_limited
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(limited, 1);
        assert_eq!(rates.message(&alice, &send(), || 1000, &metrics), Ok(()));
        // Bob's bucket is full again by 1000 and goes; alice's is empty and stays.
        rates.tidy(1000);
        assert_eq!(rates.buckets(), (1, 0));
    }

    #[test]
    fn each_shard_takes_its_share_of_an_address_limit() {
        let rates = RateLimits::new(&limits(), 2, Instant::now());
        let metrics = ShardMetrics::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        // 4 a second and a burst of 4 over 2 shards: 2 and 2 here.
        assert_eq!(rates.connect(ip, 0, &metrics), Ok(()));
        assert_eq!(rates.connect(ip, 0, &metrics), Ok(()));
        assert_eq!(rates.connect(ip, 0, &metrics), Err(RetryAfterMs(500)));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(rates.connect(other, 0, &metrics), Ok(()));
        let limited = metrics
            .ip_connects_limited
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(limited, 1);
    }

    #[test]
    fn an_ipv6_network_shares_one_bucket_and_mapped_ipv4_is_ipv4() {
        let key = |text: &str| SourceKey::of(text.parse().unwrap());
        assert_eq!(key("2001:db8::1"), key("2001:db8::ffff:1"));
        assert_ne!(key("2001:db8::1"), key("2001:db8:0:1::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
    }

    #[test]
    fn no_limit_when_the_rate_is_zero() {
        let off = Limits {
            user_msgs_per_s: 0,
            ip_connects_per_s: 0,
            ..limits()
        };
        let rates = RateLimits::new(&off, 4, Instant::now());
        let metrics = ShardMetrics::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..1000 {
            assert_eq!(
                rates.message(&user("alice"), &send(), || 0, &metrics),
                Ok(())
            );
            assert_eq!(rates.connect(ip, 0, &metrics), Ok(()));
        }
        assert_eq!(rates.buckets(), (0, 0));
    }
}
