//! The plugin's log: `tracing` events written as one line each to a file or stderr.
//!
//! A subscriber of its own rather than `tracing-subscriber`'s: the plugin logs a handful of events
//! per call and uses no spans, and `tracing-subscriber`'s span registry costs ~30 KiB of zeroed
//! memory (eight page faults) and its set-up on every exec, where the runtime waits for ADD.
//! Lines look like `tracing-subscriber`'s: `2026-11-21T10:00:00.123456Z  INFO target: message
//! key=value …`.

use std::io::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Where the lines go, and the most verbose level written.
pub struct Logger {
    level: Level,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Logger {
    pub fn new(level: Level, out: Box<dyn Write + Send>) -> Logger {
        Logger {
            level,
            out: Mutex::new(out),
        }
    }

    /// Makes this the process's subscriber (a second call is ignored).
    pub fn install(self) {
        let _ = tracing::subscriber::set_global_default(self);
    }
}

impl Subscriber for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        // `tracing` orders levels by verbosity: ERROR < WARN < INFO < DEBUG < TRACE.
        *m.level() <= self.level
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(self.level.into())
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Spans are not logged; every span gets the same id.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, e: &Event<'_>) {
        let m = e.metadata();
        let mut line = format!(
            "{} {:>5} {}: ",
            timestamp(SystemTime::now()),
            m.level(),
            m.target()
        );
        let mut v = Fields {
            line: &mut line,
            first: true,
        };
        e.record(&mut v);
        line.push('\n');
        // A log that cannot be written must not fail the call (as with tracing-subscriber).
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(line.as_bytes());
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// An event's fields: the message first, then `key=value`.
struct Fields<'a> {
    line: &'a mut String,
    first: bool,
}

impl Visit for Fields<'_> {
    fn record_debug(&mut self, f: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if !self.first {
            self.line.push(' ');
        }
        self.first = false;
        let _ = if f.name() == "message" {
            write!(self.line, "{value:?}")
        } else {
            write!(self.line, "{}={value:?}", f.name())
        };
    }
}

/// RFC 3339 in UTC with microseconds, as `tracing-subscriber` prints it.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, mo, da) = civil_from_days(days as i64);
    format!(
        "{y:04}-{mo:02}-{da:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// (year, month, day) of the day `z` days after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        for (secs, micros, want) in [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.000005Z"),
            (1_795_306_530, 349_979, "2026-11-22T00:15:30.349979Z"),
            (4_107_542_399, 999_999, "2100-02-28T23:59:59.999999Z"),
        ] {
            let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros);
            assert_eq!(timestamp(t), want, "{secs}");
        }
    }

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buf").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_carry_level_target_message_and_fields_and_respect_the_level() {
        let buf = Buf::default();
        let logger = Logger::new(Level::INFO, Box::new(buf.clone()));
        tracing::subscriber::with_default(logger, || {
            let ip = std::net::Ipv4Addr::new(10, 0, 0, 7);
            tracing::info!(%ip, table = 2, veth = "eni0", "ADD");
            tracing::debug!("not written at info");
            tracing::warn!(error = %"boom", "failed");
        });
        let text = String::from_utf8(buf.0.lock().expect("buf").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0]
                .ends_with(" INFO nodewire_cni::log::tests: ADD ip=10.0.0.7 table=2 veth=\"eni0\""),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].ends_with(" WARN nodewire_cni::log::tests: failed error=boom"),
            "{}",
            lines[1]
        );
        assert!(
            lines[0].starts_with("20") && lines[0].as_bytes()[26] == b'Z',
            "{}",
            lines[0]
        );
    }
}
