//! Application-level retry with capped exponential backoff and full jitter.
//!
//! The SDK already retries transient errors a few times; this is for operations that must be
//! waited out (an attachment still `attaching`, a throttled describe loop). Pure: the caller
//! sleeps for the returned delay, so tests can check the schedule without a clock.

use std::time::Duration;

/// Backoff schedule: `min(cap, base × factor^attempt)`, jittered down to `[delay/2, delay]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub factor: f64,
    pub max_attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            factor: 2.0,
            max_attempts: 10,
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (0-based) without jitter; `None` once attempts run out.
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        if attempt + 1 >= self.max_attempts {
            return None;
        }
        let exp = self.factor.powi(attempt.min(64) as i32);
        let d = self.base.as_secs_f64() * exp;
        Some(Duration::from_secs_f64(d.min(self.cap.as_secs_f64())))
    }

    /// Delay with "equal jitter": uniformly in `[d/2, d]`, `unit` in `[0, 1)`.
    pub fn jittered(&self, attempt: u32, unit: f64) -> Option<Duration> {
        self.delay(attempt)
            .map(|d| d.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0)))
    }
}

/// Whether an EC2 error code is worth retrying (throttling and server-side faults).
pub fn is_retryable_code(code: &str) -> bool {
    matches!(
        code,
        "RequestLimitExceeded"
            | "Throttling"
            | "ThrottlingException"
            | "InternalError"
            | "InternalFailure"
            | "Unavailable"
            | "ServiceUnavailable"
            | "EC2ThrottledException"
    )
}

/// Runs `op` until it succeeds, fails with a non-retryable error, or the schedule runs out.
pub async fn retry<T, E, F, Fut>(
    policy: Backoff,
    mut retryable: impl FnMut(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let Some(d) = (if retryable(&e) {
                    policy.jittered(attempt, rand::random::<f64>())
                } else {
                    None
                }) else {
                    return Err(e);
                };
                tokio::time::sleep(d).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_grows_and_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(500),
            factor: 2.0,
            max_attempts: 6,
        };
        let got: Vec<_> = (0..6).map(|a| b.delay(a).map(|d| d.as_millis())).collect();
        assert_eq!(
            got,
            vec![Some(100), Some(200), Some(400), Some(500), Some(500), None]
        );
        assert_eq!(b.jittered(1, 0.0).map(|d| d.as_millis()), Some(100));
        assert_eq!(b.jittered(1, 1.0).map(|d| d.as_millis()), Some(200));
    }

    #[test]
    fn retryable_codes() {
        assert!(is_retryable_code("RequestLimitExceeded"));
        assert!(is_retryable_code("Unavailable"));
        assert!(!is_retryable_code("InvalidParameterValue"));
    }

    #[tokio::test]
    async fn retry_stops_on_permanent_error() {
        let mut calls = 0;
        let r: Result<(), &str> = retry(
            Backoff {
                base: Duration::from_millis(1),
                ..Backoff::default()
            },
            |e| *e == "busy",
            || {
                calls += 1;
                let c = calls;
                async move { if c < 3 { Err("busy") } else { Err("fatal") } }
            },
        )
        .await;
        assert_eq!(r, Err("fatal"));
        assert_eq!(calls, 3);
    }
}
