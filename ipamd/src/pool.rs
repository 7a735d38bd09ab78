//! Warm-pool policy: from the datastore's counts, the targets and the instance's limits, decide
//! what to ask EC2 for or give back. Pure: the shell executes the plan and rate-limits it.
//!
//! Formulas follow upstream (`WARM_ENI_TARGET`, `WARM_IP_TARGET`/`MINIMUM_IP_TARGET`,
//! `WARM_PREFIX_TARGET`), with two deliberate differences: addresses in cooldown count as
//! unavailable, and several ENIs are planned at once when the deficit needs them.

use crate::datastore::{Datastore, Stats};
use ipnet::Ipv4Net;

/// Which target drives the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Keep `n` ENIs' worth of free addresses (upstream default, n = 1).
    WarmEni(u32),
    /// Keep `warm` free addresses and at least `min` in total; overrides the others.
    WarmIp { warm: u32, min: u32 },
    /// Keep `n` free /28 prefixes (prefix delegation).
    WarmPrefix(u32),
}

/// Instance limits as the pool sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// ENIs ipamd may use (instance limit on the default card, capped by MAX_ENI).
    pub max_enis: u32,
    /// CIDR slots per ENI for pods: IPv4 addresses per interface minus the ENI's primary.
    pub slots_per_eni: u32,
    /// Addresses a slot holds: 1 for /32 IPs, 16 for /28 prefixes.
    pub per_slot: u32,
    /// Never grow beyond this many addresses (the node's max pods).
    pub max_pods: u32,
}

impl Limits {
    pub fn addresses_per_eni(&self) -> u32 {
        self.slots_per_eni * self.per_slot
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Assign `count` more IPs (or prefixes) to an existing ENI.
    Assign { eni_id: String, count: u32 },
    /// Create and attach a new ENI carrying `count` IPs (or prefixes) from the start.
    CreateEni { count: u32 },
    /// Give CIDRs back to EC2.
    Release { cidrs: Vec<(String, Ipv4Net)> },
    /// Detach and delete an ENI with nothing on it.
    FreeEni { eni_id: String },
}

/// Why the pool cannot grow although it is short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    EniLimit { max_enis: u32 },
    MaxPods { max_pods: u32 },
}

/// The shortage in addresses (0 when the target is met).
pub fn shortage(s: &Stats, t: Target, l: &Limits) -> u32 {
    let (total, avail) = (s.total as i64, s.available as i64);
    if total >= l.max_pods as i64 {
        return 0;
    }
    let short = match t {
        Target::WarmIp { warm, min } => (warm as i64 - avail).max(min as i64 - total).max(0),
        Target::WarmEni(n) => {
            let want = l.addresses_per_eni() as i64 * n as i64;
            if n == 0 && avail == 0 {
                1
            } else {
                (want - avail).max(0)
            }
        }
        Target::WarmPrefix(n) => {
            if n == 0 && avail == 0 {
                1
            } else {
                (16 * n as i64 - avail).max(0)
            }
        }
    };
    // Never plan past max pods.
    short.min(l.max_pods as i64 - total).max(0) as u32
}

/// The surplus in addresses that may go back to EC2 as individual CIDRs.
pub fn surplus(s: &Stats, t: Target) -> u32 {
    let (total, avail) = (s.total as i64, s.available as i64);
    match t {
        Target::WarmIp { warm, min } => {
            (avail - warm as i64).max(0).min(total - min as i64).max(0) as u32
        }
        // Upstream never releases single IPs in warm-ENI mode; whole ENIs go instead.
        Target::WarmEni(_) => 0,
        Target::WarmPrefix(n) => (s.free_prefixes as i64 - n as i64).max(0) as u32 * 16,
    }
}

/// Plans the next steps. `eni_ages_ok(id)` tells whether an ENI is old enough to be freed.
pub fn plan(
    ds: &Datastore,
    now_ms: u64,
    t: Target,
    l: &Limits,
    eni_age_ok: impl Fn(&str) -> bool,
) -> (Vec<Action>, Option<Blocked>) {
    let s = ds.stats(now_ms);
    let short = shortage(&s, t, l);
    let mut actions = Vec::new();
    if short > 0 {
        // Units are slots (IPs or prefixes). Warm-ENI mode fills whole ENIs, like upstream.
        // Units are slots (IPs or prefixes). Warm-ENI mode tops up an ENI completely and creates
        // whole ENIs, like upstream; the other modes ask for exactly the shortage.
        let whole = matches!(t, Target::WarmEni(_));
        let mut units = short.div_ceil(l.per_slot);
        for e in ds.enis.values() {
            if units == 0 {
                break;
            }
            let room = l.slots_per_eni.saturating_sub(e.cidrs.len() as u32);
            if room > 0 {
                let n = if whole { room } else { room.min(units) };
                actions.push(Action::Assign {
                    eni_id: e.id.clone(),
                    count: n,
                });
                units = units.saturating_sub(n);
            }
        }
        let mut enis = ds.enis.len() as u32;
        while units > 0 && enis < l.max_enis {
            let n = if whole {
                l.slots_per_eni
            } else {
                units.min(l.slots_per_eni)
            };
            actions.push(Action::CreateEni { count: n });
            units = units.saturating_sub(n);
            enis += 1;
        }
        let blocked = (actions.is_empty()).then_some(Blocked::EniLimit {
            max_enis: l.max_enis,
        });
        return (actions, blocked);
    }
    // Shrink: leftovers of the other mode always; surplus CIDRs per the target.
    // Round down: releasing a whole prefix for part of one would undershoot and flap.
    let over_slots = (surplus(&s, t) / l.per_slot.max(1)) as usize;
    let mut release = ds.freeable_cidrs(now_ms, usize::MAX);
    let leftovers = release
        .iter()
        .filter(|(id, net)| is_leftover(ds, id, *net))
        .count();
    // Keep MINIMUM_IP_TARGET when releasing in warm-IP mode: `surplus` already bounds it.
    release.truncate(leftovers + over_slots);
    if !release.is_empty() {
        actions.push(Action::Release {
            cidrs: release.clone(),
        });
    }
    // Free one empty ENI if the pool still meets its target without it.
    let mut after = s;
    for (id, net) in &release {
        if !is_leftover(ds, id, *net) {
            let n = 1usize << (32 - net.prefix_len());
            after.total -= n;
            after.available -= n;
            if net.prefix_len() == 28 {
                after.prefixes -= 1;
                after.free_prefixes -= 1;
            }
        }
    }
    let released: Vec<&(String, Ipv4Net)> = release.iter().collect();
    for e in ds.enis.values().rev() {
        if e.primary || !eni_age_ok(&e.id) {
            continue;
        }
        let remaining: Vec<_> = e
            .cidrs
            .values()
            .filter(|c| !released.iter().any(|(id, n)| *id == e.id && *n == c.net))
            .collect();
        if remaining.iter().any(|c| !c.is_free(now_ms, ds.cooldown_ms)) {
            continue;
        }
        let mode_kind = if ds.prefix_mode {
            crate::datastore::CidrKind::Prefix
        } else {
            crate::datastore::CidrKind::Ip
        };
        let mut without = after;
        for c in remaining.iter().filter(|c| c.kind == mode_kind) {
            without.total -= c.size();
            without.available -= c.size();
            if c.kind == crate::datastore::CidrKind::Prefix {
                without.prefixes -= 1;
                without.free_prefixes -= 1;
            }
        }
        without.enis -= 1;
        if shortage(&without, t, l) == 0 {
            actions.push(Action::FreeEni {
                eni_id: e.id.clone(),
            });
        }
        break;
    }
    (actions, None)
}

fn is_leftover(ds: &Datastore, eni_id: &str, net: Ipv4Net) -> bool {
    let want = if ds.prefix_mode {
        crate::datastore::CidrKind::Prefix
    } else {
        crate::datastore::CidrKind::Ip
    };
    ds.eni_by_id(eni_id)
        .and_then(|e| e.cidrs.get(&net))
        .is_some_and(|c| c.kind != want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{CidrKind, Eni, Key, PodMeta};
    use std::collections::BTreeMap;

    const M5_LARGE: Limits = Limits {
        max_enis: 3,
        slots_per_eni: 9,
        per_slot: 1,
        max_pods: 29,
    };
    const M5_LARGE_PD: Limits = Limits {
        max_enis: 3,
        slots_per_eni: 9,
        per_slot: 16,
        max_pods: 110,
    };

    fn stats(total: usize, assigned: usize, cooling: usize) -> Stats {
        Stats {
            enis: 1,
            total,
            assigned,
            cooling,
            available: total - assigned - cooling,
            prefixes: 0,
            free_prefixes: 0,
        }
    }

    #[test]
    fn shortage_formulas() {
        let cases: &[(Stats, Target, Limits, u32)] = &[
            // WARM_ENI_TARGET=1: keep one ENI's worth (9) free.
            (stats(0, 0, 0), Target::WarmEni(1), M5_LARGE, 9),
            (stats(9, 0, 0), Target::WarmEni(1), M5_LARGE, 0),
            (stats(9, 1, 0), Target::WarmEni(1), M5_LARGE, 1),
            (stats(18, 9, 0), Target::WarmEni(1), M5_LARGE, 0),
            // Cooldown counts as unavailable (#2896).
            (stats(9, 0, 3), Target::WarmEni(1), M5_LARGE, 3),
            // WARM_ENI_TARGET=0 only grows when nothing is free.
            (stats(9, 9, 0), Target::WarmEni(0), M5_LARGE, 1),
            (stats(9, 8, 0), Target::WarmEni(0), M5_LARGE, 0),
            // WARM_IP_TARGET / MINIMUM_IP_TARGET.
            (
                stats(0, 0, 0),
                Target::WarmIp { warm: 5, min: 0 },
                M5_LARGE,
                5,
            ),
            (
                stats(5, 2, 0),
                Target::WarmIp { warm: 5, min: 0 },
                M5_LARGE,
                2,
            ),
            (
                stats(5, 0, 0),
                Target::WarmIp { warm: 2, min: 10 },
                M5_LARGE,
                5,
            ),
            (
                stats(10, 0, 0),
                Target::WarmIp { warm: 2, min: 10 },
                M5_LARGE,
                0,
            ),
            // Max pods caps the pool.
            (stats(27, 27, 0), Target::WarmEni(1), M5_LARGE, 2),
            (stats(29, 29, 0), Target::WarmEni(1), M5_LARGE, 0),
            // WARM_PREFIX_TARGET=1 keeps 16 free addresses.
            (stats(16, 1, 0), Target::WarmPrefix(1), M5_LARGE_PD, 1),
            (stats(32, 16, 0), Target::WarmPrefix(1), M5_LARGE_PD, 0),
        ];
        for (s, t, l, want) in cases {
            assert_eq!(shortage(s, *t, l), *want, "{s:?} {t:?}");
        }
    }

    #[test]
    fn surplus_formulas() {
        assert_eq!(
            surplus(&stats(20, 5, 0), Target::WarmIp { warm: 5, min: 0 }),
            10
        );
        assert_eq!(
            surplus(&stats(20, 5, 0), Target::WarmIp { warm: 5, min: 18 }),
            2,
            "MINIMUM_IP_TARGET floor"
        );
        assert_eq!(
            surplus(&stats(20, 5, 0), Target::WarmEni(1)),
            0,
            "warm-ENI mode never releases IPs"
        );
        let s = Stats {
            free_prefixes: 3,
            ..stats(48, 0, 0)
        };
        assert_eq!(surplus(&s, Target::WarmPrefix(1)), 32);
    }

    fn eni(id: &str, dev: u32) -> Eni {
        Eni {
            id: id.into(),
            device_number: dev,
            primary: dev == 0,
            primary_ip: format!("10.0.{dev}.4").parse().expect("ip"),
            subnet_id: "s".into(),
            subnet_cidr: "10.0.0.0/16".parse().expect("net"),
            route_table: Eni::route_table_for(dev, dev == 0),
            created_ms: 0,
            cidrs: BTreeMap::new(),
        }
    }

    fn ips(d: &mut Datastore, eni_id: &str, dev: u32, n: u32) {
        let nets: Vec<Ipv4Net> = (0..n)
            .map(|i| format!("10.0.{dev}.{}/32", 10 + i).parse().expect("net"))
            .collect();
        d.add_cidrs(eni_id, &nets, CidrKind::Ip);
    }

    #[test]
    fn cold_m5_large_fills_the_primary_then_plans_a_second_eni() {
        let mut d = Datastore::new(false, 30_000);
        d.add_eni(eni("eni-0", 0));
        let (a, b) = plan(&d, 0, Target::WarmEni(1), &M5_LARGE, |_| true);
        assert_eq!(
            (a, b),
            (
                vec![Action::Assign {
                    eni_id: "eni-0".into(),
                    count: 9
                }],
                None
            )
        );
        ips(&mut d, "eni-0", 0, 9);
        assert_eq!(
            plan(&d, 0, Target::WarmEni(1), &M5_LARGE, |_| true).0,
            vec![]
        );
        d.assign(&Key::new("n", "c1", "eth0"), &PodMeta::default(), 0)
            .expect("assign");
        assert_eq!(
            plan(&d, 0, Target::WarmEni(1), &M5_LARGE, |_| true).0,
            vec![Action::CreateEni { count: 9 }]
        );
    }

    #[test]
    fn warm_eni_tops_up_a_partly_filled_eni_without_a_new_one() {
        let mut d = Datastore::new(false, 0);
        d.add_eni(eni("eni-0", 0));
        ips(&mut d, "eni-0", 0, 7);
        let (a, _) = plan(&d, 0, Target::WarmEni(1), &M5_LARGE, |_| true);
        assert_eq!(
            a,
            vec![Action::Assign {
                eni_id: "eni-0".into(),
                count: 2
            }]
        );
    }

    #[test]
    fn a_large_deficit_plans_several_enis_at_once_up_to_the_limit() {
        let mut d = Datastore::new(false, 0);
        d.add_eni(eni("eni-0", 0));
        let (a, _) = plan(
            &d,
            0,
            Target::WarmIp { warm: 0, min: 27 },
            &M5_LARGE,
            |_| true,
        );
        assert_eq!(
            a,
            vec![
                Action::Assign {
                    eni_id: "eni-0".into(),
                    count: 9
                },
                Action::CreateEni { count: 9 },
                Action::CreateEni { count: 9 }
            ]
        );
        for dev in 1..3 {
            d.add_eni(eni(&format!("eni-{dev}"), dev));
        }
        for dev in 0..3 {
            ips(&mut d, &format!("eni-{dev}"), dev, 9);
        }
        for n in 0..27 {
            d.assign(
                &Key::new("n", &format!("c{n}"), "eth0"),
                &PodMeta::default(),
                0,
            )
            .expect("27 fit");
        }
        let (a, b) = plan(&d, 0, Target::WarmEni(1), &M5_LARGE, |_| true);
        assert_eq!((a, b), (vec![], Some(Blocked::EniLimit { max_enis: 3 })));
    }

    #[test]
    fn releasing_everything_returns_surplus_and_frees_empty_enis_after_cooldown() {
        let mut d = Datastore::new(false, 30_000);
        d.add_eni(eni("eni-0", 0));
        d.add_eni(eni("eni-1", 1));
        ips(&mut d, "eni-0", 0, 9);
        ips(&mut d, "eni-1", 1, 9);
        let keys: Vec<Key> = (0..12)
            .map(|n| Key::new("n", &format!("c{n}"), "eth0"))
            .collect();
        for k in &keys {
            d.assign(k, &PodMeta::default(), 0).expect("assign");
        }
        for k in &keys {
            d.release(k, 1_000);
        }
        // Warm-IP: within cooldown nothing can go; afterwards the surplus and the empty ENI do.
        let t = Target::WarmIp { warm: 3, min: 0 };
        let (a, _) = plan(&d, 2_000, t, &M5_LARGE, |_| true);
        assert_eq!(
            a.len(),
            1,
            "only never-used IPs are released during cooldown: {a:?}"
        );
        let (a, _) = plan(&d, 40_000, t, &M5_LARGE, |_| true);
        match &a[..] {
            [Action::Release { cidrs }, Action::FreeEni { eni_id }] => {
                assert_eq!(cidrs.len(), 15);
                assert!(
                    cidrs[..9].iter().all(|(e, _)| e == "eni-1"),
                    "highest ENI drained first"
                );
                assert_eq!(eni_id, "eni-1");
            }
            other => panic!("unexpected plan {other:?}"),
        }
        // Warm-ENI: no single IPs, but the second ENI goes once the first holds a full ENI's worth.
        let (a, _) = plan(&d, 40_000, Target::WarmEni(1), &M5_LARGE, |_| true);
        assert_eq!(
            a,
            vec![Action::FreeEni {
                eni_id: "eni-1".into()
            }]
        );
        let (a, _) = plan(&d, 40_000, Target::WarmEni(1), &M5_LARGE, |_| false);
        assert_eq!(a, vec![], "too young to free");
    }

    #[test]
    fn prefix_mode_plans_prefixes() {
        let mut d = Datastore::new(true, 0);
        d.add_eni(eni("eni-0", 0));
        let (a, _) = plan(&d, 0, Target::WarmPrefix(1), &M5_LARGE_PD, |_| true);
        assert_eq!(
            a,
            vec![Action::Assign {
                eni_id: "eni-0".into(),
                count: 1
            }]
        );
        // 110 pods on m5.large: 7 prefixes (112 addresses) cover max pods; the target stops there.
        let nets: Vec<Ipv4Net> = (0..7)
            .map(|i| format!("10.0.{}.0/28", 100 + i).parse().expect("net"))
            .collect();
        d.add_cidrs("eni-0", &nets, CidrKind::Prefix);
        for n in 0..110 {
            d.assign(
                &Key::new("n", &format!("c{n}"), "eth0"),
                &PodMeta::default(),
                0,
            )
            .expect("110 fit");
        }
        assert_eq!(
            plan(&d, 0, Target::WarmPrefix(1), &M5_LARGE_PD, |_| true).0,
            vec![]
        );
    }
}
