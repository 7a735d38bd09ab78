//! EC2-style request throttling: one token bucket per action class.
//!
//! EC2 meters each account with buckets per class of action (AWS documents the classes and the
//! default sizes and refill rates reproduced below). A call takes one token; an empty bucket
//! answers `RequestLimitExceeded` (HTTP 503). Pure: the caller passes `now`.

use std::collections::BTreeMap;
use std::time::Instant;

/// The classes EC2 throttles separately.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ActionClass {
    /// Describe* calls that name resources, filter or page.
    NonMutating,
    /// Describe* calls with no ids, no filters and no paging.
    UnfilteredNonMutating,
    /// Calls that change state.
    Mutating,
    /// RunInstances, TerminateInstances and other heavy calls.
    ResourceIntensive,
}

impl ActionClass {
    pub const ALL: [ActionClass; 4] = [
        ActionClass::NonMutating,
        ActionClass::UnfilteredNonMutating,
        ActionClass::Mutating,
        ActionClass::ResourceIntensive,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ActionClass::NonMutating => "non-mutating",
            ActionClass::UnfilteredNonMutating => "unfiltered-non-mutating",
            ActionClass::Mutating => "mutating",
            ActionClass::ResourceIntensive => "resource-intensive",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    /// Classifies a call. `narrowed`: the request names ids, filters or pages.
    pub fn of(action: &str, narrowed: bool) -> Self {
        if action.starts_with("Describe") {
            if narrowed {
                ActionClass::NonMutating
            } else {
                ActionClass::UnfilteredNonMutating
            }
        } else if matches!(
            action,
            "RunInstances" | "TerminateInstances" | "StartInstances" | "StopInstances"
        ) {
            ActionClass::ResourceIntensive
        } else {
            ActionClass::Mutating
        }
    }

    /// EC2's default (bucket size, refill per second).
    pub fn default_limits(self) -> (f64, f64) {
        match self {
            ActionClass::NonMutating => (100.0, 20.0),
            ActionClass::UnfilteredNonMutating => (50.0, 10.0),
            ActionClass::Mutating => (200.0, 10.0),
            ActionClass::ResourceIntensive => (50.0, 5.0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bucket {
    pub capacity: f64,
    pub refill_per_sec: f64,
    #[serde(skip)]
    tokens: f64,
    #[serde(skip)]
    last: Option<Instant>,
}

impl Bucket {
    pub fn new(capacity: f64, refill_per_sec: f64) -> Self {
        Bucket {
            capacity,
            refill_per_sec,
            tokens: capacity,
            last: None,
        }
    }

    /// Takes a token if one is there.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.refill_per_sec).min(self.capacity);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn tokens(&self) -> f64 {
        self.tokens
    }
}

/// The buckets of one account; `enabled` false lets everything through.
#[derive(Debug, Clone)]
pub struct Throttle {
    pub enabled: bool,
    pub buckets: BTreeMap<ActionClass, Bucket>,
}

impl Default for Throttle {
    fn default() -> Self {
        let buckets = ActionClass::ALL
            .into_iter()
            .map(|c| {
                let (cap, rate) = c.default_limits();
                (c, Bucket::new(cap, rate))
            })
            .collect();
        Throttle {
            enabled: true,
            buckets,
        }
    }
}

impl Throttle {
    /// Whether the call may proceed.
    pub fn admit(&mut self, class: ActionClass, now: Instant) -> bool {
        if !self.enabled {
            return true;
        }
        self.buckets.get_mut(&class).is_none_or(|b| b.take(now))
    }

    /// Replaces a class's bucket (full).
    pub fn configure(&mut self, class: ActionClass, capacity: f64, refill_per_sec: f64) {
        self.buckets
            .insert(class, Bucket::new(capacity, refill_per_sec));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_empties_and_refills() {
        let t0 = Instant::now();
        let mut b = Bucket::new(3.0, 2.0);
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0), "empty bucket must refuse");
        assert!(
            !b.take(t0 + Duration::from_millis(400)),
            "0.8 tokens is not enough"
        );
        assert!(
            b.take(t0 + Duration::from_millis(500)),
            "one token after 0.5 s at 2/s"
        );
        assert!(b.take(t0 + Duration::from_secs(60)));
        assert!(b.tokens() <= 3.0, "never above capacity");
    }

    #[test]
    fn classes() {
        assert_eq!(
            ActionClass::of("DescribeNetworkInterfaces", true),
            ActionClass::NonMutating
        );
        assert_eq!(
            ActionClass::of("DescribeNetworkInterfaces", false),
            ActionClass::UnfilteredNonMutating
        );
        assert_eq!(
            ActionClass::of("AssignPrivateIpAddresses", true),
            ActionClass::Mutating
        );
        assert_eq!(
            ActionClass::of("RunInstances", true),
            ActionClass::ResourceIntensive
        );
    }

    #[test]
    fn throttle_is_per_class_and_can_be_disabled() {
        let t0 = Instant::now();
        let mut t = Throttle::default();
        t.configure(ActionClass::Mutating, 1.0, 0.0);
        assert!(t.admit(ActionClass::Mutating, t0));
        assert!(!t.admit(ActionClass::Mutating, t0));
        assert!(
            t.admit(ActionClass::NonMutating, t0),
            "other classes unaffected"
        );
        t.enabled = false;
        assert!(t.admit(ActionClass::Mutating, t0));
    }
}
