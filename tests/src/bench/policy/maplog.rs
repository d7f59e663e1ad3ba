//! Reading the agent's "policy maps updated" log lines: when the eBPF maps took a change, how
//! many entries it wrote, and how long writing them took (the line's `elapsed` field).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const MESSAGE: &str = "policy maps updated";
const POLL: Duration = Duration::from_millis(10);

/// One map update that changed something.
#[derive(Debug, Clone, PartialEq)]
pub struct MapUpdate {
    /// The line's timestamp, Unix seconds.
    pub at: f64,
    pub policy_upserts: u64,
    pub policy_removals: u64,
    pub ipcache_upserts: u64,
    pub ipcache_removals: u64,
    /// Time spent writing the maps, if the agent logs it.
    pub elapsed: Option<Duration>,
}

impl MapUpdate {
    /// Parses a tracing-fmt line such as
    /// `2026-11-23T15:28:27.123456Z  INFO wiremesh::enforce::apply: policy maps updated
    /// policy_upserts=3 policy_removals=0 ipcache_upserts=0 ipcache_removals=0 elapsed=1.2ms`;
    /// `None` for other lines and for passes that changed nothing.
    pub fn parse(line: &str) -> Option<Self> {
        if !line.contains(MESSAGE) {
            return None;
        }
        let at = parse_rfc3339(line.split_whitespace().next()?)?;
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        };
        let count = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok());
        let update = Self {
            at,
            policy_upserts: count("policy_upserts")?,
            policy_removals: count("policy_removals")?,
            ipcache_upserts: count("ipcache_upserts")?,
            ipcache_removals: count("ipcache_removals")?,
            elapsed: field("elapsed").and_then(parse_debug_duration),
        };
        let changed = update.policy_upserts
            + update.policy_removals
            + update.ipcache_upserts
            + update.ipcache_removals;
        (changed > 0).then_some(update)
    }
}

/// The log's length now: pass it to [`wait_update`] to see only what comes after.
pub fn offset(log: &Path) -> u64 {
    std::fs::metadata(log).map_or(0, |m| m.len())
}

/// Polls `log` from byte `from` until a map update that changed something appears.
pub fn wait_update(log: &Path, from: u64, timeout: Duration) -> anyhow::Result<MapUpdate> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut text = String::new();
        let mut f = std::fs::File::open(log).with_context(|| format!("{}", log.display()))?;
        f.seek(SeekFrom::Start(from))
            .and_then(|_| f.read_to_string(&mut text))
            .with_context(|| format!("{}", log.display()))?;
        // Only whole lines: the agent may be midway through writing the last one.
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        if let Some(update) = whole.lines().find_map(MapUpdate::parse) {
            return Ok(update);
        }
        if Instant::now() >= deadline {
            bail!(
                "no \"{MESSAGE}\" line with changes in {} within {timeout:?}",
                log.display()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.frac]Z` → Unix seconds.
fn parse_rfc3339(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.splitn(3, ':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    let days = days_from_civil(y, m, day);
    Some((days * 86_400 + h * 3_600 + min * 60) as f64 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A `Duration`'s `Debug` form (`1.5s`, `12.3ms`, `850µs`, `120ns`).
fn parse_debug_duration(s: &str) -> Option<Duration> {
    let units = [
        ("ns", 1e-9),
        ("µs", 1e-6),
        ("us", 1e-6),
        ("ms", 1e-3),
        ("s", 1.0),
    ];
    let (num, scale) = units
        .iter()
        .find_map(|(u, scale)| Some((s.strip_suffix(u)?, *scale)))?;
    let v: f64 = num.parse().ok()?;
    Some(Duration::from_secs_f64(v * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_update_line() {
        let line = "2026-11-23T15:28:27.250000Z  INFO wiremesh::enforce::apply: policy maps updated \
                    policy_upserts=3 policy_removals=1 ipcache_upserts=0 ipcache_removals=0 elapsed=1.5ms";
        let u = MapUpdate::parse(line).expect("parses");
        assert!((u.at - 1_795_447_707.25).abs() < 1e-6, "{}", u.at);
        assert_eq!((u.policy_upserts, u.policy_removals), (3, 1));
        assert_eq!(u.elapsed, Some(Duration::from_micros(1500)));
    }

    #[test]
    fn passes_that_change_nothing_and_other_lines_are_skipped() {
        let idle = "2026-11-23T15:28:27Z  INFO wiremesh::enforce::apply: policy maps updated \
                    policy_upserts=0 policy_removals=0 ipcache_upserts=0 ipcache_removals=0 elapsed=80µs";
        assert_eq!(MapUpdate::parse(idle), None);
        assert_eq!(
            MapUpdate::parse("2026-11-23T15:28:27Z  INFO x: peer added"),
            None
        );
    }

    #[test]
    fn dates_and_durations() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(parse_rfc3339("1970-01-02T00:00:01.5Z"), Some(86_401.5));
        assert_eq!(parse_debug_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_debug_duration("120ns"),
            Some(Duration::from_nanos(120))
        );
        assert_eq!(parse_debug_duration("x"), None);
    }
}
