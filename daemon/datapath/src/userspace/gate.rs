//! What the data path does with a handshake initiation before any Diffie-Hellman is spent on it:
//! the flood defence. boringtun's `RateLimiter` checks mac1 and, once more than
//! [`UNDER_LOAD`] MAC-valid handshakes arrived in a second, demands a cookie (mac2), answering
//! with a cookie reply. On top of that, as wireguard-go and the kernel do, an initiation that passed
//! those checks is limited per source ([`HANDSHAKES_PER_SOURCE`]), so one address that has
//! obtained a cookie still cannot make the node compute DH at its sending rate; and cookie replies
//! are bounded per destination and in total, so that the node answers a flood (possibly with a
//! forged source) at a fixed small rate, never at the rate it arrives.
//!
//! Pure: decisions and counters, with the time passed in. Must never send or receive anything.

use std::net::IpAddr;
use std::time::Instant;

use super::ratelimit::{Rate, SourceLimiter, TokenBucket, Verdict};
use crate::model::HandshakeStats;

/// MAC-valid handshake messages per second, per local key, before cookies are demanded
/// (boringtun's device default).
pub const UNDER_LOAD: u64 = 100;
/// Handshake initiations that may reach the DH step per second from one source (wireguard-go's
/// and the kernel's figures). A real peer sends one every two minutes, or one per 5 s retry.
pub const HANDSHAKES_PER_SOURCE: Rate = Rate {
    per_second: 20,
    burst: 5,
};
/// Cookie replies per second to one destination.
pub const COOKIES_PER_DESTINATION: Rate = Rate {
    per_second: 20,
    burst: 5,
};
/// Cookie replies per second in total, whatever the number of (possibly forged) sources.
pub const COOKIES_TOTAL: Rate = Rate {
    per_second: 1_000,
    burst: 100,
};
/// Sources tracked at once per table; beyond that new sources are refused until entries expire
/// (an idle entry expires after 250 ms).
pub const MAX_SOURCES: usize = 8_192;

pub struct Gate {
    handshakes: SourceLimiter,
    cookies: SourceLimiter,
    cookies_total: TokenBucket,
    stats: HandshakeStats,
}

impl Gate {
    pub fn new(now: Instant) -> Self {
        Self {
            handshakes: SourceLimiter::new(HANDSHAKES_PER_SOURCE, MAX_SOURCES),
            cookies: SourceLimiter::new(COOKIES_PER_DESTINATION, MAX_SOURCES),
            cookies_total: TokenBucket::full(COOKIES_TOTAL, now),
            stats: HandshakeStats::default(),
        }
    }

    /// An initiation whose MACs passed: may it cost a DH computation?
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> bool {
        match self.handshakes.check(source, now) {
            Verdict::Allow => {
                self.stats.processed += 1;
                true
            }
            Verdict::Limited | Verdict::TableFull => {
                self.stats.rate_limited += 1;
                tracing::trace!(%source, "handshake rate-limited");
                false
            }
        }
    }

    /// A handshake message that needs a cookie: may a cookie reply go to `destination`?
    pub fn cookie(&mut self, destination: IpAddr, now: Instant) -> bool {
        let allowed = self.cookies.check(destination, now) == Verdict::Allow
            && self.cookies_total.take(COOKIES_TOTAL, now);
        if allowed {
            self.stats.cookie_sent += 1;
        } else {
            self.stats.cookie_suppressed += 1;
        }
        allowed
    }

    /// A handshake message whose mac1 matched none of our keys.
    pub fn invalid_mac(&mut self) {
        self.stats.invalid_mac += 1;
    }

    pub fn expire(&mut self, now: Instant) {
        self.handshakes.expire(now);
        self.cookies.expire(now);
    }

    pub fn stats(&self) -> HandshakeStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_source_flooding_gets_its_rate_of_dh_and_of_cookies() {
        let t0 = Instant::now();
        let mut g = Gate::new(t0);
        let flooder: IpAddr = "198.18.0.200".parse().unwrap();
        let peer: IpAddr = "198.18.0.2".parse().unwrap();
        // 20,000 messages per second for 10 s, alternately cookie-less and with a cookie.
        let (mut dh, mut cookies) = (0, 0);
        for i in 0..200_000u64 {
            let now = t0 + Duration::from_micros(i * 50);
            if i % 2 == 0 {
                cookies += u64::from(g.cookie(flooder, now));
            } else {
                dh += u64::from(g.admit(flooder, now));
            }
        }
        let ten_s = |r: Rate| u64::from(r.burst) + 10 * u64::from(r.per_second);
        assert!(dh <= ten_s(HANDSHAKES_PER_SOURCE), "{dh} DH computations");
        assert!(
            cookies <= ten_s(COOKIES_PER_DESTINATION),
            "{cookies} cookies"
        );
        let s = g.stats();
        assert_eq!(s.processed, dh);
        assert_eq!(s.cookie_sent, cookies);
        assert_eq!(
            s.processed + s.rate_limited + s.cookie_sent + s.cookie_suppressed,
            200_000
        );
        // Meanwhile a real peer is untouched.
        let later = t0 + Duration::from_secs(10);
        assert!(g.admit(peer, later));
        assert!(g.cookie(peer, later));
    }

    #[test]
    fn cookies_in_total_are_bounded_across_forged_sources() {
        let t0 = Instant::now();
        let mut g = Gate::new(t0);
        let mut sent = 0u64;
        // One second of 50,000 cookie-less messages, each from a different address.
        for i in 0..50_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 20);
            if i % 12_500 == 0 {
                g.expire(now); // as the data path's 250 ms tick does
            }
            let src = IpAddr::V4((0xc612_0000 + i).into());
            sent += u64::from(g.cookie(src, now));
        }
        let max = u64::from(COOKIES_TOTAL.burst) + u64::from(COOKIES_TOTAL.per_second);
        assert!(sent <= max, "{sent} cookie replies in one second");
        assert!(
            sent > u64::from(COOKIES_TOTAL.burst),
            "{sent}: the budget is used beyond the burst"
        );
    }
}
