//! Token buckets for the handshake path, so that no single source can make the data path spend
//! Diffie-Hellman computations or cookie replies at the rate it sends. Pure: every call takes the
//! time as an input, so tests inject it.
//!
//! A [`SourceLimiter`] keeps one bucket per source (an IPv4 address, or an IPv6 /64: one
//! subscriber's allocation) in a table of bounded size; a full table refuses new sources rather
//! than grow (fail closed, as the kernel's ratelimiter.c does). A bucket idle for longer than it
//! takes to fill is indistinguishable from a new one, so such entries are forgotten by
//! [`SourceLimiter::expire`].
//!
//! Must never allocate per packet beyond one table entry per new source, nor block.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// One token bucket, in nanoseconds of credit: each event costs `1 s / rate`, and the credit is
/// capped at `burst` events.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    credit: u64,
    last: Instant,
}

/// Rate and burst of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    fn cost(self) -> u64 {
        1_000_000_000 / u64::from(self.per_second.max(1))
    }

    fn max_credit(self) -> u64 {
        self.cost() * u64::from(self.burst.max(1))
    }

    /// How long an idle bucket takes to fill up again.
    fn fill_time(self) -> Duration {
        Duration::from_nanos(self.max_credit())
    }
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(rate: Rate, now: Instant) -> Self {
        Self {
            credit: rate.max_credit(),
            last: now,
        }
    }

    /// Takes one token if there is one. Time going backwards adds nothing.
    pub fn take(&mut self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        let elapsed = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.credit = self.credit.saturating_add(elapsed).min(rate.max_credit());
        self.last = self.last.max(now);
        if self.credit >= rate.cost() {
            self.credit -= rate.cost();
            true
        } else {
            false
        }
    }
}

/// What a per-source check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// The source spent its tokens.
    Limited,
    /// The table is full of other sources: refused without a bucket.
    TableFull,
}

/// One bucket per source address, in a table of at most `max_sources` entries.
#[derive(Debug)]
pub struct SourceLimiter {
    rate: Rate,
    max_sources: usize,
    table: HashMap<IpAddr, TokenBucket>,
}

impl SourceLimiter {
    pub fn new(rate: Rate, max_sources: usize) -> Self {
        Self {
            rate,
            max_sources,
            table: HashMap::new(),
        }
    }

    /// Charges one event to `source`'s bucket.
    pub fn check(&mut self, source: IpAddr, now: Instant) -> Verdict {
        let key = source_key(source);
        let rate = self.rate;
        if let Some(bucket) = self.table.get_mut(&key) {
            return if bucket.take(rate, now) {
                Verdict::Allow
            } else {
                Verdict::Limited
            };
        }
        if self.table.len() >= self.max_sources {
            return Verdict::TableFull;
        }
        let mut bucket = TokenBucket::full(rate, now);
        let allowed = bucket.take(rate, now);
        self.table.insert(key, bucket);
        if allowed {
            Verdict::Allow
        } else {
            Verdict::Limited
        }
    }

    /// Forgets the sources whose bucket has been idle long enough to be full again: a new entry
    /// for them would start exactly where theirs stands.
    pub fn expire(&mut self, now: Instant) {
        let fill = self.rate.fill_time();
        self.table
            .retain(|_, b| now.saturating_duration_since(b.last) < fill);
    }

    #[cfg(test)]
    pub fn sources(&self) -> usize {
        self.table.len()
    }
}

/// The unit a source is limited by: an IPv4 address (also when mapped into IPv6), or an IPv6
/// /64, since one host holds a whole /64 and could otherwise rotate through 2^64 buckets.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        per_second: 20,
        burst: 5,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(RATE, 16);
        let a = ip("198.18.0.9");
        let burst = (0..100)
            .take_while(|_| l.check(a, t0) == Verdict::Allow)
            .count();
        assert_eq!(burst, 5, "the burst");
        assert_eq!(l.check(a, t0), Verdict::Limited);
        // Over ten seconds at 1,000 attempts per second, exactly the rate gets through.
        let mut allowed = 0;
        for ms in 1..=10_000u64 {
            if l.check(a, t0 + Duration::from_millis(ms)) == Verdict::Allow {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 200, "20 per second for 10 s");
    }

    #[test]
    fn sources_are_limited_apart() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(RATE, 16);
        for _ in 0..50 {
            l.check(ip("198.18.0.9"), t0);
        }
        assert_eq!(l.check(ip("198.18.0.9"), t0), Verdict::Limited);
        assert_eq!(l.check(ip("198.18.0.2"), t0), Verdict::Allow);
        assert_eq!(
            l.check(ip("::ffff:198.18.0.9"), t0),
            Verdict::Limited,
            "an IPv4-mapped address is the IPv4 source"
        );
    }

    #[test]
    fn an_ipv6_source_is_its_64() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(RATE, 16);
        for i in 0..50u16 {
            l.check(ip(&format!("fd00:1:2:3::{i:x}")), t0);
        }
        assert_eq!(l.sources(), 1);
        assert_eq!(l.check(ip("fd00:1:2:3:ffff::1"), t0), Verdict::Limited);
        assert_eq!(l.check(ip("fd00:1:2:4::1"), t0), Verdict::Allow);
    }

    #[test]
    fn a_full_table_refuses_new_sources_until_entries_expire() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(RATE, 4);
        for i in 1..=4 {
            assert_eq!(l.check(ip(&format!("198.18.1.{i}")), t0), Verdict::Allow);
        }
        assert_eq!(l.check(ip("198.18.1.99"), t0), Verdict::TableFull);
        assert_eq!(
            l.check(ip("198.18.1.1"), t0),
            Verdict::Allow,
            "known sources still pass"
        );
        l.expire(t0 + Duration::from_millis(100));
        assert_eq!(l.sources(), 4, "not yet full again: kept");
        l.expire(t0 + Duration::from_millis(300));
        assert_eq!(l.sources(), 0, "idle past the fill time: forgotten");
        assert_eq!(
            l.check(ip("198.18.1.99"), t0 + Duration::from_millis(300)),
            Verdict::Allow
        );
    }

    #[test]
    fn expiry_changes_no_verdict() {
        // The same attempts with and without expiry in between decide the same.
        let t0 = Instant::now();
        let mut kept = SourceLimiter::new(RATE, 16);
        let mut expired = SourceLimiter::new(RATE, 16);
        let a = ip("198.18.0.9");
        for step in 0..2_000u64 {
            let now = t0 + Duration::from_millis(step * 7 % 1_000 + step * 3);
            if step % 13 == 0 {
                expired.expire(now);
            }
            assert_eq!(kept.check(a, now), expired.check(a, now), "step {step}");
        }
    }

    #[test]
    fn time_going_backwards_grants_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::full(RATE, t0);
        for _ in 0..5 {
            assert!(b.take(RATE, t0));
        }
        assert!(!b.take(RATE, t0 - Duration::from_secs(5)));
        assert!(!b.take(RATE, t0), "the earlier instant added no credit");
        assert!(b.take(RATE, t0 + Duration::from_millis(50)));
    }
}
